"""ralph: a supervisor for headless coding agents."""

__version__ = "0.1.0"
