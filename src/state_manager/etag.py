"""ETags from row versions, and the If-Match check that turns a stale version into 412."""

from __future__ import annotations

import re

from state_manager.errors import BadRequest

_ENTITY_TAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')


def etag(version: int) -> str:
    return f'"{version}"'


def expected_version(if_match: str | None) -> int | None:
    """The version an If-Match header asks for; None when absent or `*` (any version)."""
    if if_match is None or if_match.strip() == "*":
        return None
    found = _ENTITY_TAG.match(if_match)
    if found is None:
        raise BadRequest('If-Match must be an ETag this service returned, such as "3"')
    return int(found.group(1))
