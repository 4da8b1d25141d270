"""events and their relay; sm_record_inbound writes the events of an inbound message

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 02:00:00

Every state change writes an event in its own transaction (events/emit.py); the relay numbers committed
events per tenant (events/relay.py). The stored function of 0005 changes state too, so it now writes the
same events as the general path, with the same payloads.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from state_manager.db.types import JSONDoc, UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("events", "event_relay")

PROFILE_EVENTS = """
CREATE OR REPLACE FUNCTION sm_profile_events(
    p_tenant_id text, p_customer uuid, p_created boolean, p_changed boolean, p_profile_name text,
    p_version bigint, p_now timestamptz
) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $function$
BEGIN
    IF p_created THEN
        INSERT INTO events (tenant_id, type, conversation_id, customer_id, message_id, payload, occurred_at)
        VALUES (p_tenant_id, 'customer.created', NULL, p_customer, NULL,
                jsonb_build_object('display_name', p_profile_name), p_now);
    ELSIF p_changed THEN
        INSERT INTO events (tenant_id, type, conversation_id, customer_id, message_id, payload, occurred_at)
        VALUES (p_tenant_id, 'customer.updated', NULL, p_customer, NULL,
                jsonb_build_object('fields', jsonb_build_object('display_name', p_profile_name),
                                   'version', p_version),
                p_now);
    END IF;
END
$function$
"""

RECORD_INBOUND = """
CREATE OR REPLACE FUNCTION sm_record_inbound(
    p_tenant_id text,
    p_wa_id text,
    p_phone text,
    p_business_number_id text,
    p_business_display_number text,
    p_profile_name text,
    p_new_customer_id uuid,
    p_new_conversation_id uuid,
    p_new_state_change_id uuid,
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
    customer_created boolean,
    conversation_id uuid,
    conversation_created boolean,
    conversation_state text,
    genesys_conversation_id text,
    message_id uuid,
    duplicate boolean,
    profile_changed boolean
)
LANGUAGE plpgsql VOLATILE
AS $function$
#variable_conflict use_column
DECLARE
    v_customer uuid;
    v_customer_created boolean := false;
    v_profile_changed boolean := false;
    v_conversation uuid;
    v_conversation_created boolean := false;
    v_state text;
    v_genesys text;
    v_inserted uuid;
    v_customer_version bigint;
    v_attempt int := 0;
BEGIN
    -- Row-level security for the rest of this statement's transaction.
    PERFORM set_config('app.tenant_id', p_tenant_id, true);

    -- A repeat of a message already recorded changes nothing, even if its conversation has ended since:
    -- it must not open a new one.
    RETURN QUERY
        SELECT cv.customer_id, false, cv.id, false, cv.state::text, cv.genesys_conversation_id::text, m.id, true, false
          FROM messages m
          JOIN conversations cv ON cv.tenant_id = m.tenant_id AND cv.id = m.conversation_id
         WHERE m.tenant_id = p_tenant_id AND m.wamid = p_wamid;
    IF FOUND THEN
        RETURN;
    END IF;

    SELECT ci.customer_id INTO v_customer
      FROM customer_identities ci
     WHERE ci.tenant_id = p_tenant_id AND ci.channel = 'whatsapp' AND ci.external_id = p_wa_id;

    IF v_customer IS NULL THEN
        -- A new customer. The identity's primary key decides a race: the loser deletes the customer row
        -- it inserted (still private to its transaction) and takes the winner's.
        INSERT INTO customers (tenant_id, id, display_name, preferences, consent, attributes, version,
                               created_at, updated_at)
        VALUES (p_tenant_id, p_new_customer_id, p_profile_name, '{}', '{}', '{}', 1, p_occurred_at,
                p_occurred_at);
        INSERT INTO customer_identities (tenant_id, channel, external_id, customer_id, created_at)
        VALUES (p_tenant_id, 'whatsapp', p_wa_id, p_new_customer_id, p_occurred_at)
        ON CONFLICT DO NOTHING
        RETURNING customer_id INTO v_customer;
        IF v_customer IS NULL THEN
            DELETE FROM customers WHERE tenant_id = p_tenant_id AND id = p_new_customer_id;
            SELECT ci.customer_id INTO v_customer
              FROM customer_identities ci
             WHERE ci.tenant_id = p_tenant_id AND ci.channel = 'whatsapp' AND ci.external_id = p_wa_id;
        ELSE
            v_customer_created := true;
            IF p_phone IS NOT NULL THEN
                INSERT INTO customer_identities (tenant_id, channel, external_id, customer_id, created_at)
                VALUES (p_tenant_id, 'phone', p_phone, v_customer, p_occurred_at)
                ON CONFLICT DO NOTHING;
            END IF;
        END IF;
    END IF;

    IF NOT v_customer_created AND p_profile_name IS NOT NULL THEN
        UPDATE customers
           SET display_name = p_profile_name, version = version + 1, updated_at = p_now
         WHERE tenant_id = p_tenant_id AND id = v_customer AND display_name IS DISTINCT FROM p_profile_name
        RETURNING version INTO v_customer_version;
        v_profile_changed := FOUND;
    END IF;

    -- The open conversation on this business number, created if there is none; the partial unique index
    -- decides a race, and the loop reads the winner.
    LOOP
        -- Locked, so that a close committing meanwhile is seen (the row then no longer matches and a new
        -- conversation is opened) instead of the message landing in a closed conversation.
        SELECT cv.id, cv.state, cv.genesys_conversation_id INTO v_conversation, v_state, v_genesys
          FROM conversations cv
         WHERE cv.tenant_id = p_tenant_id
           AND cv.customer_id = v_customer
           AND cv.business_number_id = p_business_number_id
           AND cv.state IN ('active', 'error', 'pending', 'waiting')
           FOR NO KEY UPDATE;
        EXIT WHEN v_conversation IS NOT NULL;
        INSERT INTO conversations (tenant_id, id, customer_id, channel, business_number_id,
                                   business_display_number, state, state_reason, state_changed_at,
                                   started_at, last_activity_at, metadata, version, created_at, updated_at)
        VALUES (p_tenant_id, p_new_conversation_id, v_customer, 'whatsapp', p_business_number_id,
                p_business_display_number, 'pending', 'created', p_now, p_occurred_at, p_occurred_at, '{}',
                1, p_now, p_now)
        ON CONFLICT (tenant_id, customer_id, business_number_id)
            WHERE state IN ('active', 'error', 'pending', 'waiting')
            DO NOTHING
        RETURNING id INTO v_conversation;
        IF v_conversation IS NOT NULL THEN
            v_conversation_created := true;
            v_state := 'pending';
            v_genesys := NULL;
            INSERT INTO conversation_state_changes (tenant_id, id, conversation_id, from_state, to_state,
                                                    reason, changed_at)
            VALUES (p_tenant_id, p_new_state_change_id, v_conversation, NULL, 'pending', 'created', p_now);
            EXIT;
        END IF;
        v_attempt := v_attempt + 1;
        IF v_attempt >= 5 THEN
            RAISE EXCEPTION 'the conversation kept changing while it was being opened'
                USING ERRCODE = '40001';
        END IF;
    END LOOP;

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
        -- The same message, recorded by a concurrent call that committed first. Undo what this call
        -- created (still private to it) and answer as for any repeat.
        IF v_conversation_created THEN
            DELETE FROM conversations WHERE tenant_id = p_tenant_id AND id = v_conversation;
        END IF;
        -- The profile name this call refreshed stays (it committed with the statement): say so.
        PERFORM sm_profile_events(p_tenant_id, v_customer, false, v_profile_changed, p_profile_name,
                                  v_customer_version, p_now);
        RETURN QUERY
            SELECT cv.customer_id, false, cv.id, false, cv.state::text, cv.genesys_conversation_id::text, m.id, true,
                   v_profile_changed
              FROM messages m
              JOIN conversations cv ON cv.tenant_id = m.tenant_id AND cv.id = m.conversation_id
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

    -- The events come last, after every lock this call took (events/emit.py says why), in the order the
    -- general path writes them.
    PERFORM sm_profile_events(p_tenant_id, v_customer, v_customer_created, v_profile_changed, p_profile_name,
                              v_customer_version, p_now);
    IF v_conversation_created THEN
        INSERT INTO events (tenant_id, type, conversation_id, customer_id, message_id, payload, occurred_at)
        VALUES (p_tenant_id, 'conversation.created', v_conversation, v_customer, NULL,
                jsonb_build_object('state', 'pending', 'channel', 'whatsapp',
                                   'business_number_id', p_business_number_id),
                p_now);
    END IF;
    INSERT INTO events (tenant_id, type, conversation_id, customer_id, message_id, payload, occurred_at)
    VALUES (p_tenant_id, 'message.recorded', v_conversation, v_customer, v_inserted,
            jsonb_build_object('direction', 'inbound', 'type', p_type, 'wamid', p_wamid,
                               'genesys_message_id', NULL, 'text', p_text, 'sender_type', 'customer'),
            p_now);

    RETURN QUERY SELECT v_customer, v_customer_created, v_conversation, v_conversation_created, v_state,
                        v_genesys, v_inserted, false, v_profile_changed;
END
$function$
"""


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=True),
        sa.Column("customer_id", sa.Uuid(), nullable=True),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("payload", JSONDoc, nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_events")),
    )
    op.create_index("ux_events_tenant_id_seq", "events", ["tenant_id", "seq"], unique=True)
    op.create_index(
        "ix_events_unnumbered",
        "events",
        ["tenant_id", "id"],
        postgresql_where=sa.text("seq IS NULL"),
        sqlite_where=sa.text("seq IS NULL"),
    )
    op.create_table(
        "event_relay",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_event_relay")),
    )
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            # The same wall as every tenant table (0001); the default privileges of 0001 granted the app role.
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY tenant_isolation ON {table}"
                " USING (tenant_id = current_setting('app.tenant_id', true))"
                " WITH CHECK (tenant_id = current_setting('app.tenant_id', true))"
            )
        op.execute(PROFILE_EVENTS)
        op.execute(RECORD_INBOUND)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        previous = importlib.import_module(
            "state_manager.migrations.versions.0005_record_inbound_profile_changed"
        )
        op.execute(previous.RECORD_INBOUND)
        op.execute("DROP FUNCTION sm_profile_events(text, uuid, boolean, boolean, text, bigint, timestamptz)")
    op.drop_table("event_relay")
    op.drop_index("ix_events_unnumbered", table_name="events")
    op.drop_index("ux_events_tenant_id_seq", table_name="events")
    op.drop_table("events")
