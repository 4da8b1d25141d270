"""Consistency checks and repairs (`state-manager check`): each check validates one invariant the code
holds, per tenant, and repairs what can be derived safely. docs/consistency.md lists them."""

from state_manager.consistency.runner import CHECKS, Report, run_checks

__all__ = ["CHECKS", "Report", "run_checks"]
