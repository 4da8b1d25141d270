"""Database access: one interface, a PostgreSQL and a SQLite implementation chosen once from settings."""

from state_manager.db.database import Database, open_database
from state_manager.db.metadata import metadata

__all__ = ["Database", "metadata", "open_database"]
