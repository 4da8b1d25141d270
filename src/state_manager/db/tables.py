"""Every table, imported once so that the metadata is complete (migrations, checks, tests)."""

from state_manager.analytics.models import (
    analytics_agent_involvement,
    analytics_agent_sessions,
    analytics_conversations,
    analytics_facts,
    analytics_failures,
    analytics_progress,
)
from state_manager.audit.models import audit_log
from state_manager.context.models import context_entries
from state_manager.conversations.models import conversations, participants, state_changes
from state_manager.customers.models import customer_identities, customers
from state_manager.events.models import event_relay, events
from state_manager.jobs.models import job_leases
from state_manager.messages.models import messages, pending_receipts
from state_manager.queues.models import broker_outbox
from state_manager.subscriptions.models import webhook_attempts, webhook_deliveries, webhook_subscriptions
from state_manager.tenants.models import api_keys, organizations, tenants
from state_manager.webhooks.models import webhook_events

# Tables that hold one tenant's data: row-level security applies to each of them on PostgreSQL.
TENANT_TABLES = (
    customers,
    customer_identities,
    conversations,
    participants,
    state_changes,
    messages,
    pending_receipts,
    context_entries,
    webhook_events,
    broker_outbox,
    events,
    event_relay,
    webhook_subscriptions,
    webhook_deliveries,
    webhook_attempts,
    audit_log,
    analytics_facts,
    analytics_failures,
    analytics_conversations,
    analytics_agent_sessions,
    analytics_agent_involvement,
    analytics_progress,
)

__all__ = [
    "TENANT_TABLES",
    "analytics_agent_involvement",
    "analytics_agent_sessions",
    "analytics_conversations",
    "analytics_facts",
    "analytics_failures",
    "analytics_progress",
    "api_keys",
    "audit_log",
    "broker_outbox",
    "context_entries",
    "conversations",
    "customer_identities",
    "customers",
    "event_relay",
    "events",
    "job_leases",
    "messages",
    "organizations",
    "participants",
    "pending_receipts",
    "state_changes",
    "tenants",
    "webhook_attempts",
    "webhook_deliveries",
    "webhook_events",
    "webhook_subscriptions",
]
