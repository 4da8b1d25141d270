"""Security checks of issue 8 (docs/security.md), on the real servers of both backends over HTTP:

- media URLs: https on an allowed host, matched exactly on the parsed host, on every route and queue that
  takes one (refused: 422 `invalid-media-url`, nothing written; on a queue, the DLQ with that reason);
- secrets never reach the log: API keys (valid or refused), a webhook signing secret in a failing write
  (the database's error is logged with its traceback, its bound parameters hidden);
- the access log names the key ID of each authenticated request;
- API keys are stored hashed;
- `/health/ready`'s error summaries carry a class, never a database error's text.

The database role's privileges are checked in tests/test_row_level_security.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from harness import Api, Broker, Server, eventually
from owner_db import owner_execute
from state_manager.messages.media_urls import DEFAULT_MEDIA_URL_HOSTS, MediaUrlPolicy
from state_manager.observability.errors import error_summary
from state_manager.settings import Settings

PAYLOADS = Path(__file__).parent.parent / "payloads"
PROBLEM_JSON = "application/problem+json"
META = "lookaside.fbsbx.com"

# (URL, accepted) under a list that holds lookaside.fbsbx.com (the default and the harness's list both do).
MEDIA_URLS: list[tuple[str, bool]] = [
    (f"https://{META}/whatsapp_business/attachments/?mid=1234&ext=1767262000&hash=AT1", True),
    (f"https://{META.upper()}/x.jpg", True),  # hosts are case-insensitive
    (f"HTTPS://{META}/x.jpg", True),  # so are schemes
    (f"https://{META}./x.jpg", True),  # the root's trailing dot
    (f"https://{META}:443/x.jpg", True),  # the default port, written out
    (f"https://{META}/path/evil.com@x?u=https://evil.com/#frag", True),  # other hosts in path or query
    (f"http://{META}/x.jpg", False),  # plain http
    (f"ftp://{META}/x.jpg", False),
    (f"//{META}/x.jpg", False),  # no scheme
    (f"{META}/x.jpg", False),
    (f"https:{META}/x.jpg", False),  # no authority
    (f"https:///{META}/x.jpg", False),
    (f"javascript://{META}/%0aalert(1)", False),
    (f"https://{META}.evil.com/x.jpg", False),  # the allowed host as a prefix
    (f"https://evil{META}/x.jpg", False),  # ... or a suffix
    (f"https://cdn.{META}/x.jpg", False),  # a subdomain is another host
    ("https://fbsbx.com/x.jpg", False),  # and so is the parent
    (f"https://evil.com/{META}", False),  # the allowed host in the path
    (f"https://evil.com/?next=https://{META}/", False),
    (f"https://evil.com#@{META}/", False),  # ... after a fragment or query that looks like userinfo
    (f"https://evil.com?@{META}/", False),
    ("https://user@evil.com/x.jpg", False),  # userinfo at all
    (f"https://user:pw@{META}/x.jpg", False),
    (f"https://{META}@evil.com/x.jpg", False),
    (f"https://evil.com@{META}/x.jpg", False),
    (f"https://evil.com\\@{META}/x.jpg", False),  # WHATWG reads \ as /: host evil.com
    (f"https://{META}\\.evil.com/x.jpg", False),
    ("https://lookaside%2Efbsbx.com/x.jpg", False),  # percent-encoded host
    (f"https://evil.com%2F@{META}/x.jpg", False),
    (f"https://{META}:8443/x.jpg", False),  # another port
    (f"https://{META}:/x.jpg", False),
    (f"https://{META}:443:80/x.jpg", False),
    ("https://look\taside.fbsbx.com/x.jpg", False),  # WHATWG drops tabs: lookaside.fbsbx.com
    (f"https://{META}/x y.jpg", False),  # whitespace anywhere
    (f" https://{META}/x.jpg", False),
    ("https://look\u0430side.fbsbx.com/x.jpg", False),  # a Cyrillic a
    (
        "https://\uff4c\uff4f\uff4f\uff4b\uff41\uff53\uff49\uff44\uff45.fbsbx.com/x.jpg",
        False,
    ),  # fullwidth: UTS 46 maps it to the real host
    (f"https://{META}../x.jpg", False),  # an empty label
    ("https://127.0.0.1/x.jpg", False),  # IP literals, in every spelling
    ("https://2130706433/x.jpg", False),
    ("https://0x7f.1/x.jpg", False),
    ("https://[::1]/x.jpg", False),
    ("https://[::ffff:127.0.0.1]/x.jpg", False),
    ("https://169.254.169.254/latest/meta-data/", False),
    ("https://localhost/x.jpg", False),
    ("https://[::1/x.jpg", False),  # not parseable
    ("", False),
    (f"https://{META}/" + "a" * 2100, False),  # longer than 2,048 characters: a schema error (422)
]
REFUSED = [url for url, accepted in MEDIA_URLS if not accepted]
ACCEPTED = [url for url, accepted in MEDIA_URLS if accepted]


def _id(value: Any) -> str:
    return repr(value)[:60]


def wa_id() -> str:
    return str(secrets.randbelow(9) + 1) + "".join(str(secrets.randbelow(10)) for _ in range(11))


def new_wamid() -> str:
    return "wamid.HBgL" + secrets.token_hex(12)


def assert_refused(response: httpx.Response, field: str) -> dict[str, Any]:
    """422 problem+json with the code `invalid-media-url` naming the field, or, for a URL longer than the
    schema allows, the schema's `validation-failed`."""
    assert response.status_code == 422, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["code"] in ("invalid-media-url", "validation-failed"), body
    if body["code"] == "invalid-media-url":
        assert body["type"].endswith("/invalid-media-url")
        [error] = body["errors"]
        assert (error["field"], error["type"]) == (field, "invalid_media_url"), body
    return body


@pytest.fixture
def tenant(api: Api) -> Iterator[tuple[str, httpx.Client]]:
    created = api.new_tenant()
    with httpx.Client(
        base_url=api.base_url, headers={"Authorization": f"Bearer {created.key}"}, timeout=30
    ) as client:
        yield created.id, client


def recorded(client: httpx.Client, message_id: str) -> bool:
    response = client.get(f"/v1/messages/by-wamid/{message_id}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


# --- Media URLs: the policy itself ---------------------------------------------------------------------


@pytest.mark.parametrize(("url", "accepted"), MEDIA_URLS, ids=_id)
def test_the_default_list_judges_each_url_on_its_exact_host(url: str, accepted: bool) -> None:
    policy = Settings(media_url_allowed_hosts=",".join(DEFAULT_MEDIA_URL_HOSTS)).media_url_policy
    assert (policy.refusal(url) is None) == accepted, policy.refusal(url)


def test_the_setting_is_exact_hosts_or_star() -> None:
    assert Settings().media_url_policy.hosts == frozenset(DEFAULT_MEDIA_URL_HOSTS)
    # Entries are normalised as URLs' hosts are: case, a trailing dot, IDNA, IP spellings.
    policy = MediaUrlPolicy.parse(" Media.Example. , bücher.example,10.0.0.5,[::1]")
    assert policy.hosts == frozenset({"media.example", "xn--bcher-kva.example", "10.0.0.5", "::1"})
    assert policy.refusal("https://xn--bcher-kva.example/a") is None
    assert policy.refusal("https://bücher.example/a") is not None  # the URL must use the A-label
    assert policy.refusal("https://10.0.0.5/a") is None
    assert policy.refusal("https://[0:0::1]/a") is None
    assert policy.refusal("https://010.0.0.5/a") is not None
    # Any host only when asked for with `*`; still https, still no userinfo.
    anything = MediaUrlPolicy.parse("*")
    assert anything.refusal("https://files.example.org/a.png") is None
    assert anything.refusal("http://files.example.org/a.png") is not None
    assert anything.refusal("https://u@files.example.org/a.png") is not None
    for wrong in ("", " , ", "*.fbsbx.com", "https://lookaside.fbsbx.com", f"{META}:443", f"{META}/x", "a b"):
        with pytest.raises(ValidationError, match="media_url_allowed_hosts"):
            Settings(media_url_allowed_hosts=wrong)


# --- Media URLs: every route, over HTTP ----------------------------------------------------------------


@pytest.mark.parametrize("url", REFUSED, ids=_id)
def test_a_refused_media_url_is_422_on_inbound_and_writes_nothing(
    tenant: tuple[str, httpx.Client], url: str
) -> None:
    _, client = tenant
    message_id = new_wamid()
    body = {
        "wa_id": wa_id(),
        "business_number_id": "bn-1",
        "wamid": message_id,
        "type": "image",
        "media": {"url": url, "mime_type": "image/jpeg"},
    }
    assert_refused(client.post("/v1/messages/inbound", json=body), "media.url")
    assert not recorded(client, message_id)
    assert client.get("/v1/conversations", params={"limit": 5}).json()["items"] == []


@pytest.mark.parametrize("url", ACCEPTED, ids=_id)
def test_an_allowed_media_url_is_recorded_as_given(tenant: tuple[str, httpx.Client], url: str) -> None:
    _, client = tenant
    body = {
        "wa_id": wa_id(),
        "business_number_id": "bn-1",
        "wamid": new_wamid(),
        "type": "image",
        "media": {"url": url},
    }
    response = client.post("/v1/messages/inbound", json=body)
    assert response.status_code == 201, response.text
    message = client.get(f"/v1/messages/{response.json()['message_id']}").json()
    assert message["media"]["url"] == url


def test_every_route_that_takes_a_media_url_refuses_a_foreign_host(tenant: tuple[str, httpx.Client]) -> None:
    tenant_id, client = tenant
    bad = f"https://{META}.evil.com/a.jpg"
    good = f"https://{META}/a.jpg"
    customer = wa_id()
    opened = client.post(
        "/v1/messages/inbound",
        json={"wa_id": customer, "business_number_id": "bn-1", "wamid": new_wamid(), "text": "hi"},
    )
    assert opened.status_code == 201, opened.text
    conversation_id = opened.json()["conversation_id"]
    before = client.get(f"/v1/conversations/{conversation_id}/messages").json()["items"]

    # A message of a conversation.
    response = client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"direction": "outbound", "genesys_message_id": str(uuid.uuid4()), "media": {"url": bad}},
    )
    assert_refused(response, "media.url")

    # Genesys' outbound webhook, and the outbound queue's shape over HTTP.
    genesys = json.loads((PAYLOADS / "genesys_outbound_text.json").read_text())
    genesys |= {"id": str(uuid.uuid4()), "type": "Structured", "text": None}
    genesys["channel"]["to"] = {"id": customer, "idType": "Opaque"}
    genesys["content"] = [
        {"contentType": "Attachment", "attachment": {"mediaType": "Image", "url": bad, "mime": "image/png"}}
    ]
    assert_refused(client.post("/v1/outbound/genesys", json=genesys), "media.url")
    queued_out = {
        "tenantId": tenant_id,
        "genesysId": str(uuid.uuid4()),
        "type": "message",
        "payload": {"to_id": customer, "media": {"url": bad, "contentType": "image/png"}},
    }
    assert_refused(client.post("/v1/outbound/genesys", json=queued_out), "media.url")

    # The old API answers in its own shape: 400 {"error": …}.
    legacy = client.post(
        "/state/message", json={"wamid": new_wamid(), "mappingId": conversation_id, "mediaUrl": bad}
    )
    assert legacy.status_code == 400, legacy.text
    assert "MEDIA_URL_ALLOWED_HOSTS" in legacy.json()["error"]

    assert client.get(f"/v1/conversations/{conversation_id}/messages").json()["items"] == before

    # A raw WhatsApp webhook: one refused URL refuses the whole webhook, the message before it included.
    webhook = json.loads((PAYLOADS / "wa_inbound_image.json").read_text())
    value = webhook["entry"][0]["changes"][0]["value"]
    first, second = dict(value["messages"][0]), dict(value["messages"][0])
    first |= {"id": new_wamid(), "image": first["image"] | {"url": good}}
    second |= {"id": new_wamid(), "image": second["image"] | {"url": bad}}
    value["messages"] = [first, second]
    assert_refused(client.post("/v1/inbound/whatsapp", json=webhook), "items.1.media.url")
    assert not recorded(client, first["id"])
    assert not recorded(client, second["id"])
    # The same webhook with an allowed URL is recorded.
    second["image"]["url"] = good
    assert client.post("/v1/inbound/whatsapp", json=webhook).status_code == 200
    assert recorded(client, first["id"])
    assert recorded(client, second["id"])

    # The inbound queue's shape over HTTP.
    queued_in = {
        "tenantId": tenant_id,
        "wamid": new_wamid(),
        "wa_id": customer,
        "media_url": bad,
        "phone_number_id": "109876543210987",
    }
    assert_refused(client.post("/v1/inbound/whatsapp", json=queued_in), "media_url")
    assert not recorded(client, queued_in["wamid"])


def test_a_queued_message_with_a_refused_media_url_is_dead_lettered(
    api: Api, broker: Broker, tenant: tuple[str, httpx.Client]
) -> None:
    tenant_id, client = tenant
    message_id = new_wamid()
    broker.publish(
        "INBOUND_QUEUE",
        {
            "tenantId": tenant_id,
            "wamid": message_id,
            "wa_id": wa_id(),
            "contact_name": "Ana",
            "timestamp": "1767225600",
            "message_text": None,
            "media_url": "https://169.254.169.254/latest/meta-data/",
            "phone_number_id": "15550001234",
        },
    )
    broker.publish(
        "OUTBOUND_QUEUE",
        {
            "tenantId": tenant_id,
            "genesysId": str(uuid.uuid4()),
            "type": "message",
            "payload": {
                "to_id": wa_id(),
                "media": {"url": f"http://{META}/a.png", "contentType": "image/png"},
            },
        },
    )

    def of_tenant(body: dict[str, Any]) -> bool:
        original = body.get("original_payload")
        return isinstance(original, dict) and original.get("tenantId") == tenant_id

    dead = broker.take("DLQ_NAME", 2, where=of_tenant)
    assert sorted((d["reason"], d["retry_count"]) for d in dead) == [("invalid_media_url", 0)] * 2
    assert all("media" in d["error_message"] for d in dead), dead
    assert not recorded(client, message_id)
    # What /health/ready shows of it is the reason, not the message.
    report = api.get("/health/ready").json()["checks"]["queues"]
    assert report["queues"][broker.queue("INBOUND_QUEUE")]["last_error"].startswith("rejected: ")
    assert "169.254" not in json.dumps(report)
    assert message_id not in json.dumps(report)


# --- Secrets and the log -------------------------------------------------------------------------------


def _provoke_failure_on_subscription_insert(server: Server, tenant_id: str) -> list[Any]:
    """A trigger that fails every subscription insert of this tenant (and only its), as the database
    would for a real fault; returns the statements that remove it."""
    if server.backend == "sqlite":
        name = f"boom_{uuid.uuid4().hex[:8]}"
        owner_execute(
            server,
            text(
                f"CREATE TRIGGER {name} BEFORE INSERT ON webhook_subscriptions "
                f"WHEN NEW.tenant_id = '{tenant_id}' BEGIN SELECT RAISE(ABORT, 'provoked'); END"
            ),
        )
        return [text(f"DROP TRIGGER {name}")]
    name = f"boom_{uuid.uuid4().hex[:8]}"
    owner_execute(
        server,
        text(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.tenant_id = '{tenant_id}' THEN "
            "RAISE EXCEPTION 'provoked' USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$"
        ),
        text(
            f"CREATE TRIGGER {name} BEFORE INSERT ON webhook_subscriptions "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()"
        ),
    )
    return [text(f"DROP TRIGGER {name} ON webhook_subscriptions"), text(f"DROP FUNCTION {name}()")]


def test_no_key_or_secret_reaches_the_log_and_each_request_names_its_key_id(api: Api) -> None:
    created = api.new_tenant()
    secret = "whsec_" + secrets.token_urlsafe(24)
    refused_key = f"smk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    marker = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {created.key}", "X-Request-ID": f"sec-{marker}"}

    cleanup = _provoke_failure_on_subscription_insert(api.server, created.id)
    try:
        failed = api.post(
            "/v1/webhooks/subscriptions",
            json={"url": "https://receiver.invalid/hook", "secret": secret},
            headers=headers,
        )
    finally:
        owner_execute(api.server, *cleanup)
    # The database refused the write; the answer says so without its text.
    assert failed.status_code in (409, 500), failed.text
    assert secret not in failed.text
    assert "provoked" not in failed.text
    refused = api.get("/v1/tenant", headers={"Authorization": f"Bearer {refused_key}"})
    assert refused.status_code == 401
    assert api.get("/v1/tenant", headers=headers).status_code == 200

    log = api.server.process.log_text
    mine = f"sec-{marker}"

    def logged() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in log().splitlines() if mine in line]
        return lines if sum(1 for line in lines if line.get("logger") == "state_manager.access") >= 2 else []

    lines = eventually(logged)
    # The failing write was logged, with its traceback, and the statement's values hidden.
    [failure] = [line for line in lines if line.get("logger") == "state_manager.errors"]
    assert "hide_parameters=True" in failure.get("exception", ""), failure
    # The access lines name the key by its ID.
    access = [line for line in lines if line.get("logger") == "state_manager.access"]
    assert {line.get("key_id") for line in access} == {created.key_id}, access
    everything = log()
    for leaked in (secret, created.key, created.key.split("_", 2)[2], refused_key, api.admin_key):
        assert leaked not in everything


def test_api_keys_are_stored_hashed(api: Api) -> None:
    created = api.new_tenant()
    _, prefix, secret = created.key.split("_", 2)
    [rows] = owner_execute(
        api.server, text("SELECT * FROM api_keys WHERE prefix = :prefix").bindparams(prefix=prefix)
    )
    [row] = rows
    stored = " ".join(str(value) for value in row.values())
    assert secret not in stored
    assert created.key not in stored
    assert row["prefix"] == prefix
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    if api.backend == "sqlite":
        # Nowhere in the file either (nor in its write-ahead log).
        data = b"".join(path.read_bytes() for path in api.server.data_dir.parent.glob("sm.db*"))
        assert secret.encode() not in data


def test_database_errors_are_summarised_without_their_values(tmp_path: Path) -> None:
    """What `/health/ready` would show of a failed statement: its class, the driver's, the SQLSTATE."""
    database = tmp_path / "db.sqlite"
    sqlite3.connect(database).execute("CREATE TABLE t (v TEXT UNIQUE)").connection.commit()
    value = "whsec_" + secrets.token_urlsafe(12)

    async def fail() -> DBAPIError:
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{database}", poolclass=NullPool, hide_parameters=True
        )
        try:
            for _ in range(2):
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": value})
        except DBAPIError as exc:
            return exc
        finally:
            await engine.dispose()
        raise AssertionError("no error")

    error = asyncio.run(fail())
    assert value not in str(error)
    assert error_summary(error) == "IntegrityError (IntegrityError)"
    assert error_summary(ConnectionRefusedError(111, "Connect call failed")).startswith(
        "ConnectionRefusedError"
    )
    assert error_summary(ValueError(value)) == "ValueError"
