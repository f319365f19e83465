"""Processes, the lock, atomic files and the service manager: what runs under everything."""
