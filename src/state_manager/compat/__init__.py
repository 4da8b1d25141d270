"""Compatibility with the old Node.js state-manager's HTTP API (see compat/service.py)."""
