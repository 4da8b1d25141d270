"""record an inbound message in one round trip (PostgreSQL)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 20:50:00

The common case of an inbound WhatsApp message (a known customer with an open conversation on that
business number) runs as one statement: tenant, lookup, profile-name refresh, insert-once and the
conversation's activity times, in the statement's own transaction. It returns no row when the customer or
the open conversation does not exist yet; the service then takes its general path, which creates them
(messages.service.record_inbound). The two must stay equivalent: the same tests run against both.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECORD_INBOUND = """
CREATE OR REPLACE FUNCTION sm_record_inbound(
    p_tenant_id text,
    p_wa_id text,
    p_business_number_id text,
    p_profile_name text,
    p_message_id uuid,
    p_wamid text,
    p_type text,
    p_text text,
    p_media_url text,
    p_media_mime_type text,
    p_media_filename text,
    p_media_caption text,
    p_metadata jsonb,
    p_occurred_at timestamptz,
    p_now timestamptz,
    p_reply_window interval
) RETURNS TABLE (
    customer_id uuid,
    conversation_id uuid,
    conversation_state text,
    genesys_conversation_id text,
    message_id uuid,
    duplicate boolean
)
LANGUAGE plpgsql VOLATILE
AS $function$
#variable_conflict use_column
DECLARE
    v_customer uuid;
    v_display_name text;
    v_conversation uuid;
    v_state text;
    v_genesys text;
    v_inserted uuid;
BEGIN
    -- Row-level security for the rest of this statement's transaction.
    PERFORM set_config('app.tenant_id', p_tenant_id, true);

    SELECT cu.id, cu.display_name, cv.id, cv.state, cv.genesys_conversation_id
      INTO v_customer, v_display_name, v_conversation, v_state, v_genesys
      FROM customers cu
      LEFT JOIN conversations cv
        ON cv.tenant_id = cu.tenant_id
       AND cv.customer_id = cu.id
       AND cv.business_number_id = p_business_number_id
       AND cv.state IN ('active', 'error', 'pending', 'waiting')
     WHERE cu.tenant_id = p_tenant_id
       AND cu.id = (SELECT ci.customer_id
                      FROM customer_identities ci
                     WHERE ci.tenant_id = p_tenant_id
                       AND ci.channel = 'whatsapp'
                       AND ci.external_id = p_wa_id);
    IF v_conversation IS NULL THEN
        RETURN;
    END IF;

    IF p_profile_name IS NOT NULL AND v_display_name IS DISTINCT FROM p_profile_name THEN
        UPDATE customers
           SET display_name = p_profile_name, version = version + 1, updated_at = p_now
         WHERE tenant_id = p_tenant_id AND id = v_customer;
    END IF;

    INSERT INTO messages (
        tenant_id, id, conversation_id, direction, wamid, genesys_message_id, type, text,
        media_url, media_mime_type, media_filename, media_caption, sender_type, sender_id,
        occurred_at, created_at, updated_at, queued_at, metadata
    ) VALUES (
        p_tenant_id, p_message_id, v_conversation, 'inbound', p_wamid, NULL, p_type, p_text,
        p_media_url, p_media_mime_type, p_media_filename, p_media_caption, 'customer', p_wa_id,
        p_occurred_at, p_now, p_now, NULL, p_metadata
    )
    ON CONFLICT DO NOTHING
    RETURNING id INTO v_inserted;

    IF v_inserted IS NULL THEN
        -- A repeat of a message already recorded: nothing changes.
        RETURN QUERY
            SELECT v_customer, m.conversation_id, v_state, v_genesys, m.id, true
              FROM messages m
             WHERE m.tenant_id = p_tenant_id AND m.wamid = p_wamid;
        RETURN;
    END IF;

    -- GREATEST skips NULLs: a late or repeated message never moves a clock back.
    UPDATE conversations
       SET last_activity_at = GREATEST(last_activity_at, p_occurred_at),
           last_inbound_at = GREATEST(last_inbound_at, p_occurred_at),
           reply_window_ends_at = GREATEST(reply_window_ends_at, p_occurred_at + p_reply_window),
           version = version + 1,
           updated_at = p_now
     WHERE tenant_id = p_tenant_id AND id = v_conversation;

    RETURN QUERY SELECT v_customer, v_conversation, v_state, v_genesys, v_inserted, false;
END
$function$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RECORD_INBOUND)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION sm_record_inbound(text, text, text, text, uuid, text, text, text, text, text, "
            "text, text, jsonb, timestamptz, timestamptz, interval)"
        )
