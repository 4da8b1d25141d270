"""What a job did, or would do in a dry run, per tenant: shown by the CLI, kept in the lease row."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobReport:
    job: str
    dry_run: bool
    # Per tenant, what was (or would be) changed: {"expired": 3}, {"messages_redacted": 120, …}.
    tenants: dict[str, Counter[str]] = field(default_factory=dict)
    stopped_early: bool = False
    # Tenants whose run failed, with why: the others are not held back by one.
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, tenant_id: str, what: str, count: int) -> None:
        if count:
            self.tenants.setdefault(tenant_id, Counter())[what] += count

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.tenants.values():
            total.update(counts)
        return total

    def as_outcome(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "stopped_early": self.stopped_early,
            "failed": dict(sorted(self.failed.items())),
            "totals": dict(self.totals()),
            "tenants": {tenant: dict(counts) for tenant, counts in sorted(self.tenants.items())},
        }
