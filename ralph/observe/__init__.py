"""Telemetry: logs, the event log, traces, stats and the HTML report."""
