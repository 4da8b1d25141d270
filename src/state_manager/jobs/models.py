"""Leases of scheduled jobs (retention, expiry): one instance at a time runs each, and the last outcome
stays readable for operators. Not tenant data: a job walks every tenant."""

from sqlalchemy import Column, PrimaryKeyConstraint, String, Table

from state_manager.db.metadata import metadata
from state_manager.db.types import JSONDoc, UTCDateTime

job_leases = Table(
    "job_leases",
    metadata,
    Column("name", String(64), nullable=False),
    Column("holder", String(128), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("last_started_at", UTCDateTime, nullable=True),
    Column("last_finished_at", UTCDateTime, nullable=True),
    Column("last_outcome", JSONDoc, nullable=True),
    PrimaryKeyConstraint("name"),
)
