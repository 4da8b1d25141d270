"""`state-manager cache …`: a running server's cache figures, and warming it.

The figures live in the server (each process counts its own lookups; with several workers they are summed
through PROMETHEUS_MULTIPROC_DIR), so these commands ask it over HTTP with an admin key.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from state_manager.cli.common import JsonOption, err, fail, load_settings, print_table

if TYPE_CHECKING:
    import httpx

cache = typer.Typer(
    name="cache",
    help="The lookup cache of a running server: figures per cache, and warming.",
    no_args_is_help=True,
)

UrlOption = typer.Option(
    "--url", help="The running server (default: http://HOST:PORT from the settings)", show_default=False
)
KeyOption = typer.Option(
    "--api-key",
    envvar="STATE_MANAGER_API_KEY",
    help="An admin key (default: the embedded default's admin-key file)",
    show_default=False,
)


def _client(url: str | None, api_key: str | None) -> httpx.Client:
    import httpx

    settings = load_settings()
    if url is None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        url = f"http://{host}:{settings.port}"
    if api_key is None:
        try:
            api_key = settings.admin_key_file.read_text().strip()
        except OSError:
            fail(f"give an admin key: --api-key or STATE_MANAGER_API_KEY (no {settings.admin_key_file})", 2)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30.0)


def _refused(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        fail(f"the server answered {response.status_code}: {detail}")


def _ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.1%}"


@cache.command("stats")
def stats(
    url: Annotated[str | None, UrlOption] = None,
    api_key: Annotated[str | None, KeyOption] = None,
    as_json: Annotated[bool, JsonOption] = False,
) -> None:
    """Hit ratio, loads, invalidations, evictions and size per cache, and the state of each tier."""
    import httpx

    try:
        with _client(url, api_key) as client:
            response = client.get("/v1/admin/cache")
    except httpx.HTTPError as exc:
        fail(f"cannot reach the server: {exc}")
    _refused(response)
    body: dict[str, Any] = response.json()
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    tiers = body["tiers"]
    err.print(
        f"cache: {body['backend']}, {body['status']}"
        + (f", circuit {tiers['circuit']}" if "circuit" in tiers else "")
        + f"; local tier {'on' if tiers['local']['enabled'] else 'off'}"
    )
    rows = []
    for name, f in body["caches"].items():
        rows.append(
            (
                name,
                _ratio(f["hit_ratio"]),
                f["hits_local"],
                f["hits_redis"],
                f["misses"],
                f["loads"]["found"],
                None if f["load_seconds_avg"] is None else f"{f['load_seconds_avg'] * 1000:.2f}",
                f["invalidations"],
                f["evictions"]["size"] + f["evictions"]["expired"],
                f["local_entries"],
                f"{f['local_bytes'] / 1024:.0f} KiB",
            )
        )
    print_table(
        "Lookup cache",
        ["Cache", "Hit ratio", "Local hits", "Redis hits", "Misses", "Loads", "Load ms", "Invalidated",
         "Evicted", "Entries", "Size"],
        rows,
        whole=("Cache",),
    )  # fmt: skip
    redis = body.get("redis")
    if redis:
        err.print(
            f"redis: {redis['keys']} keys, {redis['used_memory_bytes']} bytes used, "
            f"maxmemory {redis['maxmemory_bytes'] or 'unset'} ({redis['maxmemory_policy']}), "
            f"{redis['evicted_keys']} evicted"
        )


@cache.command("warm")
def warm(
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", help="Only this tenant (repeatable; default: all)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many conversations")] = 10_000,
    hours: Annotated[float, typer.Option(min=0.01, help="Active within this many hours")] = 24.0,
    url: Annotated[str | None, UrlOption] = None,
    api_key: Annotated[str | None, KeyOption] = None,
) -> None:
    """Load the lookups of recently active open conversations into the server's cache."""
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    params: dict[str, Any] = {"limit": limit, "hours": hours}
    if tenant:
        params["tenant"] = tenant
    done: dict[str, Any] = {}
    try:
        with (
            _client(url, api_key) as client,
            client.stream("POST", "/v1/admin/cache/warm", params=params) as response,
        ):
            if response.status_code >= 400:
                response.read()
                _refused(response)
            columns = (TextColumn("warming"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=err) as progress:
                task = progress.add_task("warm", total=None)
                for line in response.iter_lines():
                    if not line:
                        continue
                    update = json.loads(line)
                    progress.update(task, completed=update["conversations"], total=update["total"] or None)
                    if update.get("done"):
                        done = update
    except httpx.HTTPError as exc:
        fail(f"warming stopped: {exc}")
    if not done:
        fail("the server stopped before warming finished")
    typer.echo(f"warmed {done['lookups']} lookups of {done['conversations']} conversations")
