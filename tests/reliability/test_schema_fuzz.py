"""schemathesis over the server's own OpenAPI document (issue 8, "Hostile input").

schemathesis' command line runs against each backend's real server (tests/conftest.py), over HTTP, with the
document the server serves at /openapi.json. Its phases: coverage (boundary and schema-violating values of
every parameter and body field, unsupported methods, missing and invalid credentials) and fuzzing
(`SCHEMA_FUZZ_EXAMPLES` generated requests per operation, positive and negative). Its checks: no 5xx, every
status code and content type documented, every body and header as its schema says, schema-violating
requests refused with 4xx, undeclared methods 405 with a true Allow, credentials required where the document
says so. What is switched off, and why, is in tests/reliability/schemathesis.toml.

Two passes per backend: a tenant key on a fresh tenant of its own (writes land there only; admin routes are
refused, which is checked too), then an admin key on the administration routes. Not fuzzed: the WebSocket
(`/v1/ws` is not in the document; tests/test_events_live.py), `/metrics` and `/dashboard` (not in it either),
and the stateful phase (chains of calls by OpenAPI links, which the document has none of).

Reproducible: a fixed seed (`SCHEMA_FUZZ_SEED`); a failure's output names each case with a curl command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import Api

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = os.environ.get("SCHEMA_FUZZ_SEED", "20260801")
EXAMPLES = os.environ.get("SCHEMA_FUZZ_EXAMPLES", "10")
TIMEOUT_SECONDS = 600


def schemathesis_command() -> list[str]:
    beside = Path(sys.executable).with_name("schemathesis")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]')")
    return [found]


def unhandled_errors(api: Api) -> int:
    return api.server.process.log_text().count('"message":"unhandled error"')


def run_schemathesis(api: Api, workdir: Path, headers: dict[str, str], *selection: str) -> None:
    """One schemathesis run; fails with its report (and the server's log tail) unless every check passed."""
    errors_before = unhandled_errors(api)
    command = [
        *schemathesis_command(),
        "--config-file", str(CONFIG),
        "run", f"{api.base_url}/openapi.json",
        "--seed", SEED,
        "--max-examples", EXAMPLES,
        "--workers", "1",  # hypothesis' lambda descriptions are not thread-safe ("AST constructor recursion")
        "--request-timeout", "30",
        "--output-truncate", "false",
        "--no-color",
        *(option for name, value in headers.items() for option in ("--header", f"{name}: {value}")),
        *selection,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
    )
    report = done.stdout + done.stderr
    # The key is filtered from schemathesis' own output, but not from a repeated command line.
    for secret in headers.values():
        report = report.replace(secret, "[key]")
    summary = re.findall(r"^=+ .* =+$", report, flags=re.MULTILINE)
    print(summary[-1] if summary else report[-2000:])
    assert done.returncode == 0, (
        f"schemathesis found failures on {api.backend} (exit {done.returncode}):\n{report[-60000:]}\n"
        f"server log tail:\n{api.server.process.log_tail(20)}"
    )
    assert unhandled_errors(api) == errors_before, api.server.process.log_tail(40)
    assert api.get("/health/ready").status_code == 200


def test_schemathesis_with_a_tenant_key(api: Api, tmp_path: Path) -> None:
    tenant = api.new_tenant("schemathesis")
    # X-Tenant-ID is fixed to the key's own tenant, so that requests get past the tenant check and reach
    # the routes; generated and hostile X-Tenant-ID values are test_tenant_fuzz.py's.
    run_schemathesis(api, tmp_path, {"Authorization": f"Bearer {tenant.key}", "X-Tenant-ID": tenant.id})
    # Whatever it wrote stayed in its tenant: a fresh tenant sees none of it.
    other = api.new_tenant("bystander")
    assert api.get("/v1/customers", key=other.key).json()["items"] == []


def test_schemathesis_with_an_admin_key_on_the_admin_routes(api: Api, tmp_path: Path) -> None:
    # Only the administration: the tenant routes with an admin key are the tenant pass again. What it
    # creates (organizations, tenants, keys with generated names) stays; generated IDs never name the
    # harness' own tenants or keys (keys are UUIDs, tenants need an exact match of a 64-character form).
    run_schemathesis(
        api,
        tmp_path,
        {"Authorization": f"Bearer {api.admin_key}", "X-Tenant-ID": api.server.default_tenant_id},
        "--include-path-regex", "^/v1/(admin/|analytics/system)",
        # schemathesis reuses IDs it read in list answers: these would rename the session's tenants,
        # revoke its admin key or rate-limit it to nothing, under every other test of the session.
        "--exclude-name", "PATCH /v1/admin/tenants/{tenant_id}",
        "--exclude-name", "PATCH /v1/admin/keys/{key_id}",
        "--exclude-name", "DELETE /v1/admin/keys/{key_id}",
    )  # fmt: skip
    assert api.get("/v1/tenant", key=api.admin_key, headers={"X-Tenant-ID": api.server.default_tenant_id})
