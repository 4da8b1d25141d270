"""The shared cache (Redis): every entry a server could still serve answers what the database answers now.

Each entry is compared with a fresh load through the very function that filled it (the `*_cached` lookups
with a cache that always loads), so the comparison is byte for byte. An entry that differs is looked at
again after a pause: a write that committed between the two reads drops its entries within that time
(docs/design.md, "Never stale after an acknowledged write"), and is not a finding.

Repairs only delete: the entry, and every entry sharing a tag with it, in Redis and in every server's
local tier (the invalidation a write publishes). The check never writes an entry.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from state_manager.agents import service as agents
from state_manager.cache import Loaded, LookupCache
from state_manager.cache.local import LocalTier
from state_manager.cache.lookups import (
    AGENT_CONTEXT,
    CONVERSATION_BY_GENESYS_ID,
    CUSTOMER_BY_IDENTITY,
    LEGACY_MAPPING,
    MESSAGE_BY_GENESYS_ID,
    MESSAGE_BY_WAMID,
    OPEN_CONVERSATION,
    decode_entry,
)
from state_manager.cache.shared import GENERATION_KEY, SharedTier, tenant_prefix
from state_manager.compat import service as compat
from state_manager.consistency.core import Check, Context, Finding, Outcome, Result
from state_manager.conversations import service as conversations
from state_manager.conversations.schemas import BUSINESS_NUMBER_ID
from state_manager.customers import service as customers
from state_manager.customers.identity import IdentityChannel
from state_manager.db import Database
from state_manager.errors import NotFound
from state_manager.messages import service as messages

SCAN_COUNT = 200
# A write drops its entries right after its commit, well within the second other instances are given to
# agree (docs/design.md): an entry still differing after this is stale, not caught mid-write.
CONFIRM_SECONDS = 1.0


class _Loader(LookupCache):
    """A cache that never keeps anything: each lookup loads from the database, and the last load is kept
    for the check to look at (what a server would store, and for how long)."""

    def __init__(self) -> None:
        local = LocalTier(0.0, 0, 0)
        super().__init__(local, SharedTier(local), 0.0)
        self.loaded: Loaded | None = None

    async def get(
        self, cache: str, tenant_id: str, key: str, load: Callable[[], Awaitable[Loaded]]
    ) -> tuple[bytes, str]:
        self.loaded = await load()
        return self.loaded.body, self.loaded.etag


@dataclass(frozen=True, slots=True)
class Entry:
    redis_key: str
    value: bytes
    cache: str
    key: str
    tags: tuple[str, ...]
    body: bytes
    etag: str


class SharedCacheEntries(Check):
    name = "cache"
    invariant = (
        "Every entry of the shared cache (Redis) equals what the database answers now, and is listed under "
        "each of its tags, so that the next write that changes it drops it."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        if ctx.redis is None:
            return (
                "no REDIS_URL: the cache lives inside each server process (at most CACHE_LOCAL_SECONDS per "
                "entry), out of this command's reach"
            )
        return None

    async def find(self, ctx: Context, tenant_id: str) -> AsyncIterator[list[Finding]]:
        redis = ctx.redis
        assert redis is not None
        generation = await redis.get(GENERATION_KEY)
        if generation is None:
            return  # no server has used the cache yet
        # Servers read only the current generation; older entries are never served and expire by themselves.
        prefix = f"{tenant_prefix(tenant_id)}:g{int(generation)}:"
        reported: set[tuple[str, ...]] = set()  # SCAN may return a key twice
        cursor = 0
        while True:
            cursor, keys = await redis.scan(cursor, match=_glob_escape(prefix) + "*", count=SCAN_COUNT)
            entries = await _entries(redis, prefix, [key.decode() for key in keys])
            found = [f for f in await self._examine(ctx, tenant_id, entries) if f.subjects not in reported]
            reported.update(f.subjects for f in found)
            if found:
                yield found
            if cursor == 0:
                return

    async def _examine(self, ctx: Context, tenant_id: str, entries: Sequence[Entry]) -> list[Finding]:
        redis = ctx.redis
        assert redis is not None
        suspects = [entry for entry in entries if await _disagreement(ctx.db, tenant_id, entry) is not None]
        found = []
        if suspects:
            await asyncio.sleep(CONFIRM_SECONDS)
            values = await redis.mget([entry.redis_key for entry in suspects])
            for entry, value in zip(suspects, values, strict=True):
                if value != entry.value:
                    continue  # dropped or replaced meanwhile: a write's own invalidation
                disagreement = await _disagreement(ctx.db, tenant_id, entry)
                if disagreement is not None:
                    found.append(self._finding(tenant_id, entry, disagreement))
        suspected = {entry.redis_key for entry in suspects}
        agreeing = [entry for entry in entries if entry.redis_key not in suspected]
        for entry, missing in zip(agreeing, await _unlisted(ctx, tenant_id, agreeing), strict=True):
            if missing:
                detail = (
                    f"not listed under its tag(s) {', '.join(missing)}: a write changing it would leave it"
                )
                found.append(self._finding(tenant_id, entry, detail))
        return found

    def _finding(self, tenant_id: str, entry: Entry, detail: str) -> Finding:
        return Finding(self.name, tenant_id, (entry.cache, entry.key), detail, data=entry)

    async def repair_one(self, ctx: Context, tenant_id: str, finding: Finding) -> Result:
        entry: Entry = finding.data
        redis = ctx.redis
        assert redis is not None
        deleted = await redis.delete(entry.redis_key)
        # The tags' invalidation, as a write publishes it: the copies servers hold in their local tier go too.
        await ctx.cache.publish({(tenant_id, tag) for tag in entry.tags})
        return Result(finding, Outcome.REPAIRED if deleted else Outcome.RESOLVED, "deleted (with its tags)")


async def _entries(redis: Redis, prefix: str, keys: Sequence[str]) -> list[Entry]:
    """The entries at these keys that a server could still serve (present, not past their expiry)."""
    if not keys:
        return []
    found = []
    for redis_key, value in zip(keys, await redis.mget(keys), strict=True):
        if value is None:
            continue
        expires_at, etag, tags, body = decode_entry(value)
        if expires_at <= time.time():
            continue
        cache, _, key = redis_key.removeprefix(prefix).partition(":")
        found.append(Entry(redis_key, value, cache, key, tags, body, etag))
    return found


async def _unlisted(ctx: Context, tenant_id: str, entries: Sequence[Entry]) -> list[list[str]]:
    """For each entry, the tags whose list (what a write drops) lacks it."""
    redis = ctx.redis
    assert redis is not None
    async with redis.pipeline(transaction=False) as pipe:
        for entry in entries:
            for tag in entry.tags:
                pipe.sismember(f"{tenant_prefix(tenant_id)}:tag:{tag}", entry.redis_key)
        listed = iter(await pipe.execute())
    return [[tag for tag in entry.tags if not next(listed)] for entry in entries]


async def _disagreement(db: Database, tenant_id: str, entry: Entry) -> str | None:
    """How the entry differs from what the database answers now; None when it does not."""
    loader = _Loader()
    try:
        lookup = _lookup(entry.cache, entry.key)
    except ValueError:
        return None  # a cache this version does not know (a newer server's): not compared
    try:
        await lookup(db, loader, tenant_id)
    except (NotFound, compat.CompatError):
        return "the database has no answer for it now"
    loaded = loader.loaded
    assert loaded is not None
    if loaded.body != entry.body or loaded.etag != entry.etag:
        return "differs from what the database answers now"
    if loaded.valid_for is not None and loaded.valid_for <= 0:
        return "its conversation ended: servers keep no entry for it"
    return None


Lookup = Callable[[Database, LookupCache, str], Awaitable[object]]


def _lookup(cache: str, key: str) -> Lookup:
    """The lookup that fills `cache` under `key` (the keys are built by the `*_cached` functions)."""
    if cache == OPEN_CONVERSATION:
        number, channel, external_id = _open_conversation_key(key)
        return lambda db, c, t: conversations.open_by_identity_cached(db, c, t, channel, external_id, number)
    if cache == CONVERSATION_BY_GENESYS_ID:
        return lambda db, c, t: conversations.by_genesys_id_cached(db, c, t, key)
    if cache in (MESSAGE_BY_WAMID, MESSAGE_BY_GENESYS_ID):
        kind = "wamid" if cache == MESSAGE_BY_WAMID else "genesys"
        return lambda db, c, t: messages.by_external_id_cached(db, c, t, kind, key)
    if cache == CUSTOMER_BY_IDENTITY:
        channel, _, external_id = key.partition(":")
        identity_channel = IdentityChannel(channel)
        return lambda db, c, t: customers.by_identity_cached(db, c, t, identity_channel, external_id)
    if cache == AGENT_CONTEXT:
        conversation, _, count = key.rpartition(":")
        conversation_id, message_count = uuid.UUID(conversation), int(count)
        return lambda db, c, t: agents.agent_context_cached(
            db, c, t, conversation_id, message_count=message_count
        )
    if cache == LEGACY_MAPPING:
        return lambda db, c, t: compat.mapping_by_wa_id_cached(db, c, t, key)
    raise ValueError(f"unknown cache {cache!r}")


def _open_conversation_key(key: str) -> tuple[str | None, str, str]:
    """`<business number or *>:<channel>:<external ID>`; a business number may hold ':' itself."""
    for channel in IdentityChannel:
        marker = f":{channel.value}:"
        start = key.find(marker)
        while start != -1:
            number = key[:start]
            if number == "*" or re.fullmatch(BUSINESS_NUMBER_ID, number):
                return (None if number == "*" else number), channel.value, key[start + len(marker) :]
            start = key.find(marker, start + 1)
    raise ValueError(f"not an open-conversation key: {key!r}")


def _glob_escape(text: str) -> str:
    """`text` matched literally by SCAN's MATCH."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
