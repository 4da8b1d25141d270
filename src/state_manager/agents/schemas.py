"""What an agent sees of a conversation, in one answer."""

from __future__ import annotations

from pydantic import BaseModel, Field

from state_manager.context.schemas import ContextRead
from state_manager.conversations.schemas import ConversationRead, ParticipantRead
from state_manager.customers.schemas import CustomerRead
from state_manager.messages.schemas import MessageRead

DEFAULT_MESSAGES = 50
MAX_MESSAGES = 500
EARLIER_CONVERSATIONS = 20


class AgentContext(BaseModel):
    conversation: ConversationRead
    participants: list[ParticipantRead]
    customer: CustomerRead = Field(description="Profile and every identity (WhatsApp, phone, …)")
    conversation_context: ContextRead
    customer_context: ContextRead = Field(description="Kept across the customer's conversations")
    messages: list[MessageRead] = Field(description="The latest messages with their statuses, oldest first")
    more_messages: bool = Field(description="Whether older messages exist than those returned")
    earlier_conversations: list[ConversationRead] = Field(
        description=f"The customer's other conversations, newest first (at most {EARLIER_CONVERSATIONS})"
    )
