"""The benchmark harness runs end to end on a few events (the real benchmark is `python bench/run.py`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_bench_smoke_run_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--smoke",
        "--scenarios",
        "small",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "python bench/run.py --smoke" in text
    assert "Pinning:" in text
    if shutil.which("wrk"):
        row = next(line for line in text.splitlines() if line.startswith("| small events"))
        cells = [c.strip() for c in row.split("|")]
        assert int(cells[3].strip("*").replace(",", "")) > 0  # spintrail events/s
        assert "non-200" not in text  # every request was answered 200
    else:
        assert "wrk is not installed" in text
    assert "600/600 identical" in text  # every sampled event read back byte for byte
    for table in ("## Storage", "## Queries at 600 events", "| server group |", "## Memory (server RSS)"):
        assert table in text


@pytest.mark.slow
def test_bench_keeps_a_filled_postgresql_query_database_and_reuses_it(tmp_path: Path) -> None:
    """``--query-db postgresql://.../NAME`` fills that database once, keeps it, and the next run reuses it."""
    import uuid

    import psycopg

    from conftest import PG_URL, require_pg

    require_pg()
    name = f"spintrail_benchtest_{uuid.uuid4().hex[:8]}"
    server = PG_URL.rsplit("/", 1)[0]
    kept = f"{server}/{name}"

    def run(out: Path) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--only",
            "queries",
            "--database",
            PG_URL,
            "--query-db",
            kept,
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)

    try:
        first = run(tmp_path / "first.md")
        assert first.returncode == 0, first.stderr[-3000:]
        assert "ingesting 600 events" in first.stderr
        assert "vacuumed and analyzed" in (tmp_path / "first.md").read_text()
        second = run(tmp_path / "second.md")
        assert second.returncode == 0, second.stderr[-3000:]
        assert "ingesting" not in second.stderr and f"reusing {kept} (600 events)" in second.stderr
        text = (tmp_path / "second.md").read_text()
        assert "## Queries at 600 events" in text and "| server group |" in text
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
