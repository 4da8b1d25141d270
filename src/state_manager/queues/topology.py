"""The existing service's queues, named by the same variables, declared exactly as every service declares
them today: durable, with no arguments. Another service's declaration with different arguments would fail
with PRECONDITION_FAILED, so none are ever added."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from state_manager.settings import Settings


class Consumed(enum.StrEnum):
    INBOUND = "inbound"  # whatsapp-webhook-service: a customer's message
    STATUS = "status"  # whatsapp-webhook-service: a WhatsApp delivery status
    OUTBOUND = "outbound"  # genesys-webhook-service: an agent's message
    GENESYS_STATUS = "genesys_status"  # genesys-webhook-service: a receipt or event for an agent's message
    CORRELATION = "correlation"  # genesys-api-service: the Genesys conversation of an inbound message


class Output(enum.StrEnum):
    INBOUND_ENRICHED = "inbound_enriched"  # to inbound-transformer
    OUTBOUND_PROCESSED = "outbound_processed"  # to outbound-transformer
    GENESYS_STATUS_PROCESSED = "genesys_status_processed"  # to genesys-api-service


@dataclass(frozen=True, slots=True)
class Topology:
    consumed: dict[Consumed, str]
    outputs: dict[Output, str]
    dlq: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            consumed={
                Consumed.INBOUND: settings.inbound_queue,
                Consumed.STATUS: settings.status_queue,
                Consumed.OUTBOUND: settings.outbound_queue,
                Consumed.GENESYS_STATUS: settings.genesys_status_queue,
                Consumed.CORRELATION: settings.correlation_queue,
            },
            outputs={
                Output.INBOUND_ENRICHED: settings.inbound_enriched_queue,
                Output.OUTBOUND_PROCESSED: settings.outbound_processed_queue,
                Output.GENESYS_STATUS_PROCESSED: settings.genesys_status_processed_queue,
            },
            dlq=settings.dlq_name,
        )

    @property
    def every_queue(self) -> list[str]:
        return [*self.consumed.values(), *self.outputs.values(), self.dlq]


def queue_variables() -> dict[str, str]:
    """Every queue's environment variable and its default name (for tools that run servers)."""
    fields = Settings.model_fields
    names = [name for name in fields if name.endswith("_queue")] + ["dlq_name"]
    return {name.upper(): str(fields[name].default) for name in names}
