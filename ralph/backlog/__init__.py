"""The backlog: task specs, their states, and what ralph remembers of each task."""
