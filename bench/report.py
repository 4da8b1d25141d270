"""Figures from raw results, the printed table, the JSON file, and the targets."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult

# The service's performance targets (docs/benchmarks.md; issue 8 raised inbound and lookup).
TARGETS: dict[str, dict[str, float]] = {
    "inbound": {"min_per_second": 2000.0, "max_p99_ms": 50.0},
    "receipts": {"min_items_per_second": 5000.0},
    "webhook": {"min_items_per_second": 10000.0},
    "lookup": {"min_ratio_to_baseline": 0.8},
    "lookup-half": {"max_p99_ms": 10.0},
}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(result: LoadResult, baseline_rps: float | None) -> dict[str, Any]:
    lat = sorted(result.latencies_ms)
    rps = result.ok_requests / result.duration_s
    out: dict[str, Any] = {
        "scenario": result.scenario,
        "duration_s": result.duration_s,
        "requests": result.requests,
        "ok_requests": result.ok_requests,
        "errors": result.errors,
        "requests_per_s": round(rps, 1),
        "items_per_s": round(result.ok_items / result.duration_s, 1),
        "latency_ms": {
            "mean": round(sum(lat) / len(lat), 2) if lat else None,
            "p50": round(percentile(lat, 50), 2) if lat else None,
            "p95": round(percentile(lat, 95), 2) if lat else None,
            "p99": round(percentile(lat, 99), 2) if lat else None,
            "max": round(lat[-1], 2) if lat else None,
        },
        "ratio_to_baseline": round(rps / baseline_rps, 3) if baseline_rps else None,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "transport_errors": result.transport_errors,
        "error_samples": {str(k): v for k, v in result.error_samples.items()},
        "cpu_percent_of_one_core": result.cpu_percent,
        "server_connections_per_process": result.server_connections,
        "load_generator": result.sources,
    }
    if result.scenario in ("receipts", "webhook"):
        applied = sum(src.get("outcomes_in_window", {}).get("applied", 0) for src in result.sources)
        out["applied_per_s"] = round(applied / result.duration_s, 1)
    out["target"] = check_target(out)
    return out


def notes(summary: dict[str, Any]) -> list[str]:
    """One-line remarks on what the server answered, from the load generators' counters."""
    sources: list[dict[str, Any]] = summary["load_generator"]
    out: list[str] = []
    if summary["scenario"] in ("receipts", "webhook"):
        outcomes: dict[str, int] = {}
        for source in sources:
            for name, count in source.get("outcomes_in_window", {}).items():
                outcomes[name] = outcomes.get(name, 0) + count
        out.append(
            "receipt outcomes in the window: "
            + ", ".join(f"{k} {v}" for k, v in outcomes.items())
            + f" ({summary.get('applied_per_s', 0):,.1f} applied/s)"
        )
        stale = sum(source.get("stale_receipts", 0) for source in sources)
        if stale:
            out.append(
                f"warning: {stale} receipts repeated `read` after every message had been read "
                "(cheap no-ops); raise --receipt-messages"
            )
    if cores := summary.get("server_cpus"):
        per_cpu = summary["items_per_s"] / cores
        out.append(f"server pinned to {cores} CPU(s): {per_cpu:,.1f} items/s per server CPU")
    if summary["scenario"] == "inbound":
        created = sum(source.get("conversations_created_in_window", 0) for source in sources)
        out.append(f"conversations created in the window: {created}")
    cpu = summary["cpu_percent_of_one_core"]
    sent_per_s = summary["requests"] / summary["duration_s"] if summary["duration_s"] else 0
    groups = (("server", "server"), ("postgres", "PostgreSQL"))
    measured = [(name, cpu[key]) for key, name in groups if cpu.get(key)]
    if measured and sent_per_s:
        # percent of one core * 10,000 / (requests a second) = µs of CPU per request, answered or not
        shown = ", ".join(f"{name} {percent * 10_000 / sent_per_s:,.0f} µs" for name, percent in measured)
        out.append(f"CPU per request: {shown}")
    pg = cpu.get("pg_stat_database")
    requests = summary["requests"]
    if pg and requests and pg["xact_commit"] + pg["xact_rollback"] >= requests / 100:
        out.append(
            "PostgreSQL per request: "
            f"{pg['xact_commit'] / requests:.2f} commits, {pg['xact_rollback'] / requests:.2f} rollbacks, "
            f"{pg['tup_inserted'] / requests:.1f} rows inserted, {pg['tup_updated'] / requests:.1f} updated; "
            f"{pg['sessions']} new database connections in the window"
        )
    unbalanced = [s["connections"] for s in sources if not s.get("connections", {}).get("balanced", True)]
    if unbalanced:
        out.append(f"connections not balanced over the server's workers: {unbalanced[0].get('why')}")
    return out


def check_target(summary: dict[str, Any]) -> dict[str, Any] | None:
    target = TARGETS.get(summary["scenario"])
    if target is None:
        return None
    checks: list[bool] = []
    if "min_per_second" in target:
        checks.append(summary["requests_per_s"] >= target["min_per_second"])
    if "max_p99_ms" in target:
        p99 = summary["latency_ms"]["p99"]
        checks.append(p99 is not None and p99 <= target["max_p99_ms"])
    if "min_items_per_second" in target:
        # receipts: only those that changed a message count (repeats of `read` are cheap no-ops)
        rate = min(summary["items_per_s"], summary.get("applied_per_s", summary["items_per_s"]))
        checks.append(rate >= target["min_items_per_second"])
    if "min_ratio_to_baseline" in target:
        ratio = summary["ratio_to_baseline"]
        checks.append(ratio is not None and ratio >= target["min_ratio_to_baseline"])
    if summary["errors"]:
        checks.append(False)
    return {**target, "met": all(checks)}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(summaries: list[dict[str, Any]]) -> str:
    header = (
        f"{'scenario':<10} {'req/s':>9} {'items/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'x base':>7} {'target':>7}   cpu% of a core: server/pg/redis/loadgen/other"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        lat = s["latency_ms"]
        cpu = s["cpu_percent_of_one_core"]
        cpu_text = (
            "/".join(f"{cpu.get(k, 0):.0f}" for k in ("server", "postgres", "redis", "loadgen", "other"))
            if cpu
            else "-"
        )
        target = s["target"]
        met = "-" if target is None else ("met" if target["met"] else "MISSED")
        lines.append(
            f"{s['scenario']:<10} {_fmt(s['requests_per_s']):>9} {_fmt(s['items_per_s']):>9} "
            f"{_fmt(lat['p50'], 2):>8} {_fmt(lat['p95'], 2):>8} {_fmt(lat['p99'], 2):>8} "
            f"{s['errors']:>7} {_fmt(s['ratio_to_baseline'], 2):>7} {met:>7}   {cpu_text}"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_commit(repo: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    commit = done.stdout.strip()
    if not commit:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    return commit + ("+dirty-src" if dirty else "")


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def hit_ratios(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Hits over hits and misses per cache between two `GET /v1/admin/cache` answers, and over all."""
    ratios: dict[str, Any] = {}
    all_hits = all_lookups = 0
    for name, now in after["caches"].items():
        then = before["caches"][name]
        hits = (now["hits_local"] + now["hits_redis"]) - (then["hits_local"] + then["hits_redis"])
        lookups = hits + now["misses"] - then["misses"]
        if lookups:
            ratios[name] = {"lookups": lookups, "hit_ratio": round(hits / lookups, 4)}
            all_hits += hits
            all_lookups += lookups
    ratios["all"] = {
        "lookups": all_lookups,
        "hit_ratio": round(all_hits / all_lookups, 4) if all_lookups else None,
    }
    return ratios
