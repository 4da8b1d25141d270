"""Health, readiness, metrics, docs and errors of a real server on each backend."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Api, Server, ServerProcess, clean_env


def test_live(api: Api) -> None:
    response = api.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_reports_each_check(api: Api) -> None:
    response = api.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["failed"] == []
    assert body["checks"]["database"]["status"] == "ok"
    cache = body["checks"]["cache"]
    assert cache["status"] == "ok"
    assert cache["backend"] in ("redis", "memory")
    assert cache["local"]["enabled"] is True
    if cache["backend"] == "redis":
        assert cache["circuit"] == "closed"
        assert cache["subscribed"] is True


def test_metrics_count_requests(api: Api) -> None:
    api.get("/health/live")
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "state_manager_http_requests_total" in response.text
    assert 'route="/health/live"' in response.text
    for name in ("hits", "misses", "loads", "invalidations", "evictions"):
        assert f"state_manager_cache_{name}_total" in response.text, name
    assert "# TYPE state_manager_cache_load_seconds histogram" in response.text


def test_docs_are_html(api: Api) -> None:
    response = api.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()


def test_openapi_document_is_valid(api: Api) -> None:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "state-manager"
    for path in ("/health/live", "/health/ready", "/v1/admin/tenants", "/v1/admin/keys", "/v1/tenant"):
        assert path in document["paths"], path
    for path, operations in document["paths"].items():
        assert path.startswith("/"), path
        for method, operation in operations.items():
            assert method in {"get", "post", "put", "patch", "delete", "head", "options"}, (path, method)
            assert "responses" in operation, (path, method)
    # Every reference points at a schema that is there.
    schemas = document.get("components", {}).get("schemas", {})
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_unknown_route_is_problem_json(api: Api) -> None:
    response = api.get("/no/such/route")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404
    assert body["type"].startswith("https://")
    assert body["instance"] == "/no/such/route"


def test_requests_without_a_key_are_refused(api: Api) -> None:
    response = api.get("/v1/tenant")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_a_fresh_tenant_key_acts_for_its_tenant(api: Api) -> None:
    tenant = api.new_tenant()
    response = api.get("/v1/tenant", key=tenant.key)
    assert response.status_code == 200
    assert response.json()["id"] == tenant.id


def test_first_run_admin_key_file_is_private_and_never_logged(sqlite_server: Server) -> None:
    key_file = sqlite_server.data_dir / "admin-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert key.startswith("smk_")
    log = sqlite_server.process.log_text()
    assert "first run" in log  # the log does say where the key is…
    assert key not in log  # …but never what it is
    # The secret is URL-safe base64 and may itself contain "_": split where the service does.
    secret = key.removeprefix("smk_").partition("_")[2]
    assert len(secret) >= 40
    assert secret not in log
    assert key not in sqlite_server.process.stdout_path.read_text(errors="replace")


def test_server_log_is_json_lines(server: Server) -> None:
    # Lines end with "\n" only: str.splitlines would also cut at characters JSON carries unescaped (\x1c,
    # \x85, \u2028), which the hostile-input tests put in logged paths.
    lines = [line for line in server.process.log_text().split("\n") if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys(), line


def test_ready_is_degraded_not_failed_when_redis_is_down(workdir: Path) -> None:
    """Without Redis the service reads the database: slower, not wrong, and still ready."""
    env = clean_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'sm.db'}",
        DATA_DIR=str(workdir / "data"),
        REDIS_URL="redis://127.0.0.1:1/0",  # nothing listens on port 1
        LOG_FORMAT="json",
        AUTH_MODE="required",
    )
    process = ServerProcess("dead-cache", env, workdir)
    process.start()
    try:
        process.wait_for("/health/live")
        response = process.wait_for("/health/ready", status=200, timeout=10)
        body = response.json()
        assert body["status"] == "degraded"
        assert body["failed"] == []
        assert body["checks"]["cache"]["status"] == "degraded"
        assert body["checks"]["cache"]["subscribed"] is False
        assert body["checks"]["cache"]["local"]["enabled"] is False
        assert body["checks"]["database"]["status"] == "ok"
    finally:
        assert process.stop(), process.log_tail()


def test_two_workers_share_metrics_in_a_temporary_directory(workdir: Path) -> None:
    scratch = workdir / "tmp"
    scratch.mkdir()
    env = clean_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'sm.db'}",
        DATA_DIR=str(workdir / "data"),
        LOG_FORMAT="json",
        TMPDIR=str(scratch),
    )
    process = ServerProcess("two-workers", env, workdir, serve_args=("--workers", "2"))
    process.start()
    try:
        process.wait_for("/health/ready")
        (metrics_dir,) = scratch.glob("state-manager-metrics-*")
        for _ in range(10):
            # New connections, so that both workers get some of them.
            assert httpx.get(f"{process.base_url}/health/live").status_code == 200
        text = httpx.get(f"{process.base_url}/metrics").text
        assert _counter(text, "/health/live") >= 10
        assert any(metrics_dir.iterdir())
    finally:
        assert process.stop(), process.log_tail()
    assert not metrics_dir.exists()


def _counter(text: str, route: str) -> float:
    prefix = f'state_manager_http_requests_total{{method="GET",route="{route}",status="200"}} '
    values = [float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)]
    assert values, text
    return sum(values)


@pytest.mark.parametrize("path", ["/v1/admin/tenants", "/v1/admin/keys", "/v1/admin/organizations"])
def test_admin_routes_need_an_admin_key(api: Api, path: str) -> None:
    tenant = api.new_tenant()
    assert api.get(path, key=tenant.key).status_code == 403
    assert api.get(path, key=api.admin_key).status_code == 200
