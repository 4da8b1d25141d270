"""The embedded default on a fresh machine: private files, and several workers starting at once."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import httpx

from harness import ServerProcess, clean_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_data_dir_and_database_are_private_with_two_workers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    process = ServerProcess(
        "fresh",
        clean_env(DATA_DIR=str(data_dir), LOG_FORMAT="json", AUTH_MODE="required"),
        tmp_path,
        serve_args=("--workers", "2"),
    )
    process.start()
    try:
        process.wait_for("/health/ready")
        key = (data_dir / "admin-key").read_text().strip()
        # Whichever worker answers, the one key created on the first run works.
        for _ in range(10):
            response = httpx.get(
                f"{process.base_url}/v1/admin/tenants", headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200, response.text
        assert [t["id"] for t in response.json()] == ["default"]
        assert _mode(data_dir) == 0o700
        assert _mode(data_dir / "admin-key") == 0o600
        database_files = sorted(data_dir.glob("state-manager.db*"))
        assert data_dir / "state-manager.db" in database_files
        for path in database_files:
            assert _mode(path) == 0o600, path
    finally:
        assert process.stop(), process.log_tail()
    assert process.log_text().count("first run:") == 1


def test_concurrent_migrations_of_one_fresh_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sm.db'}"
    script = "import sys; from state_manager.db.migrate import upgrade_to_head; upgrade_to_head(sys.argv[1])"
    runs = [
        subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE, text=True)
        for _ in range(8)  # four were not always enough to collide without the lock
    ]
    outcomes = [(run.communicate(timeout=120)[1], run.returncode) for run in runs]
    failures = [stderr for stderr, code in outcomes if code != 0]
    assert not failures, failures[0]
