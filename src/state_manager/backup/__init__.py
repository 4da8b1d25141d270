"""Backup, archive and restore files: one format (format.py), written by snapshot.py, read by load.py."""

from state_manager.backup.format import BackupError, Manifest
from state_manager.backup.snapshot import write_snapshot

__all__ = ["BackupError", "Manifest", "write_snapshot"]
