"""The refusals every operation can answer, in the OpenAPI document.

FastAPI documents only what a route declares (and a 422 in its own shape, which this service never sends).
The errors here come from the layers every request crosses: the request middleware (413, NUL in the URL),
the key and tenant checks (400 X-Tenant-ID, 401, 403, 404 for a service key naming no tenant), body
validation (400 not JSON, 422), the rate limits (429), the database (503) and the net under writes
(409 on an unexpected integrity error). `/v1` routes answer them as application/problem+json
(`http_errors.py`); the old API's routes as `{"error": …}` (`compat/routes.py`), except the middleware's.
"""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_OLD_ERROR_REF = {"$ref": "#/components/schemas/OldApiError"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; validation errors name each field, never its value",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "location": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}

OLD_API_ERROR_SCHEMA: dict[str, Any] = {
    "title": "OldApiError",
    "description": "The existing service's error shape",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
    "additionalProperties": True,
}

DESCRIPTIONS = {
    400: "Bad request: the body is not JSON, X-Tenant-ID is malformed or missing, If-Match is malformed",
    401: "No valid API key",
    403: "The key may not do this, or may not act for the tenant named",
    404: "Not found (another tenant's data is not found either), or the tenant named does not exist",
    409: "Conflicts with the current data",
    410: "Gone",
    412: "If-Match names an older version",
    413: "The body is larger than MAX_BODY_BYTES",
    422: "The request does not match the schema",
    429: "Over the key's rate limit (Retry-After)",
    503: "The database or another backend is unavailable (Retry-After)",
}

_EVERY_V1 = (400, 401, 403, 404, 413, 422, 429, 503)
_WRITES = {"post", "put", "patch", "delete"}
_OLD_API = (400, 401, 403, 404, 413, 429, 503)


def _content(old_api: bool, status: int) -> dict[str, Any]:
    problem = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
    if not old_api or status == 413:  # the middleware's refusals are problems on every route
        return problem
    return {"application/json": {"schema": _OLD_ERROR_REF}, **problem}


def document_errors(document: dict[str, Any]) -> None:
    """Adds the refusals to every operation of `document` (in place), with their bodies' schemas."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["OldApiError"] = OLD_API_ERROR_SCHEMA
    for path, operations in document["paths"].items():
        if path.startswith("/health/"):
            continue  # the probes answer 200 or their documented 503, and read no key
        old_api = not path.startswith("/v1/")
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if old_api:
                statuses: set[int] = {*_OLD_API, 409, 410} if method in _WRITES else {*_OLD_API, 410}
                if path in ("/health", "/state/health"):
                    statuses = {503}
                responses.pop("422", None)  # the old API answers validation errors with 400
            else:
                statuses = set(_EVERY_V1) | ({409} if method in _WRITES else set())
                if path == "/v1/events":
                    statuses.add(410)
            statuses |= {int(code) for code in responses if code.isdigit() and int(code) >= 400}
            for status in sorted(statuses):
                entry = responses.setdefault(str(status), {})
                entry.setdefault("description", DESCRIPTIONS.get(status, "Refused"))
                if status == 503 and path in ("/health", "/state/health"):
                    entry.setdefault("content", {"application/json": {"schema": {}}})  # the health body
                    continue
                if status == 422 or "content" not in entry:
                    entry["content"] = _content(old_api, status)
    if not any(
        "HTTPValidationError" in str(operation.get("responses", {}))
        for operations in document["paths"].values()
        for operation in operations.values()
    ):
        schemas.pop("HTTPValidationError", None)
        if "loc" in schemas.get("ValidationError", {}).get("properties", {}):  # FastAPI's, not ours
            schemas.pop("ValidationError", None)
