"""Webhook subscriptions: other services receive the tenant's events, signed, retried, in order per
conversation (docs/design.md, "Webhook subscriptions")."""
