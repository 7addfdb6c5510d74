"""The command line: search in every format, bulk import with dedup, simulate, and clear errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def run(
    *args: str, cwd: Path | None = None, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "spintrail", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=300,
    )


def write_events(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return path


def ev(n: int, user: str = "alice@example.com", app: str = "checkout") -> dict[str, Any]:
    return {
        "details": {
            "source": "orca",
            "type": "orca:orchestration:complete",
            "created": str(1_718_000_000_000 + n * 1000),
            "application": app,
        },
        "content": {
            "execution": {
                "type": "ORCHESTRATION",
                "id": f"E{n}",
                "application": app,
                "description": f"Destroy Server Group: {app}-prod-v{n:03d}",
                "authentication": {"user": user},
                "status": "SUCCEEDED",
                "stages": [
                    {
                        "type": "destroyServerGroup",
                        "context": {
                            "credentials": "prod",
                            "region": "us-east-1",
                            "serverGroupName": f"{app}-prod-v{n:03d}",
                        },
                    }
                ],
            },
            "executionId": f"E{n}",
        },
        "eventId": f"00000000-0000-0000-0000-{n:012d}",
    }


def test_import_then_search_in_every_format(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    f = write_events(tmp_path / "events.ndjson", [ev(1), ev(2, user="bob@example.com"), ev(3, app="search")])
    r = run("import", str(f), "--database", db, "--format", "json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary[0]["stored"] == 3 and summary[0]["duplicates"] == 0
    # Importing again stores nothing twice.
    r = run("import", str(f), "--database", db, "--format", "json")
    assert json.loads(r.stdout)[0] | {"file": None} == {
        "file": None,
        "events": 3,
        "stored": 0,
        "duplicates": 3,
        "error": None,
    }

    r = run("search", "--database", db, "--user", "bob@example.com", "--format", "json")
    rows = json.loads(r.stdout)
    assert [row["execution_id"] for row in rows] == ["E2"]
    assert rows[0]["server_groups"] == ["checkout-prod-v002"]
    assert rows[0]["time"] == "2024-06-10T06:13:22.000Z"

    r = run("search", "--database", db, "--application", "checkout", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["execution_id"] for row in table] == ["E2", "E1"]
    assert table[0]["accounts"] == "prod"

    r = run("search", "--database", db, "--q", "search-prod-v003")
    assert r.returncode == 0
    assert "search-prod-v003" in r.stdout and "E1" not in r.stdout

    r = run("search", "--database", db, "--limit", "1", "--format", "table")
    assert "more: --cursor" in r.stderr
    cursor = r.stderr.split("--cursor")[1].split()[0]
    r = run("search", "--database", db, "--limit", "1", "--cursor", cursor, "--format", "json")
    assert [row["execution_id"] for row in json.loads(r.stdout)] == ["E2"]


def test_search_errors_say_what_to_do(tmp_path: Path) -> None:
    db = str(tmp_path / "e.db")
    r = run("search", "--database", db, "--since", "yesterday-ish")
    assert r.returncode == 2
    assert "relative age" in r.stderr
    r = run("search", "--database", str(tmp_path / "missing" / "x.db"))
    assert r.returncode == 1
    assert "create it first" in r.stderr
    r = run("search", "--database", db, "--limit", "0")
    assert r.returncode == 2 and "limit" in r.stderr


def test_import_reports_bad_files_and_keeps_what_came_before(tmp_path: Path) -> None:
    db = str(tmp_path / "bad.db")
    good = json.dumps(ev(1))
    f = tmp_path / "broken.ndjson"
    f.write_text(good + "\n" + '{"details": {"type": "x"}, "content": ' + "\n")
    r = run("import", str(f), "--database", db, "--format", "json")
    assert r.returncode == 1
    row = json.loads(r.stdout)[0]
    assert row["stored"] == 1
    assert "line 2" in row["error"] or "offset" in row["error"]
    r = run("import", str(tmp_path / "nope.json"), "--database", db)
    assert r.returncode == 2 and "not a file" in r.stderr


def test_import_the_665_real_igor_build_events(tmp_path: Path, echo_fixtures: Path) -> None:
    db = str(tmp_path / "igor.db")
    f = echo_fixtures / "igor_build__spinnaker-echo__events.json"
    r = run("import", str(f), "--database", db, "--format", "json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)[0]
    assert summary["events"] == 665
    assert summary["stored"] + summary["duplicates"] == 665
    r = run("search", "--database", db, "--type", "build", "--limit", "1000", "--format", "json")
    rows = json.loads(r.stdout)
    assert len(rows) == summary["stored"]
    assert all(row["source"] == "igor" for row in rows)


def test_config_file_and_environment(tmp_path: Path) -> None:
    db = tmp_path / "from-config.db"
    cfg = tmp_path / "spintrail.toml"
    cfg.write_text(f'database = "{db}"\n')
    f = write_events(tmp_path / "e.ndjson", [ev(1)])
    assert run("import", str(f), "--config", str(cfg)).returncode == 0
    assert db.exists()
    r = run("search", "--format", "json", env={"SPINTRAIL_DATABASE": str(db)})
    assert len(json.loads(r.stdout)) == 1
    cfg.write_text('databse = "typo.db"\n')
    r = run("search", "--config", str(cfg))
    assert r.returncode != 0 and "unknown settings: databse" in r.stderr
    cfg.write_text("database = \n")
    r = run("search", "--config", str(cfg))
    assert r.returncode != 0 and "not valid TOML" in r.stderr


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_top_level_flags(flag: str) -> None:
    r = run(flag)
    assert r.returncode == 0
    assert "spintrail" in r.stdout


def test_simulate_writes_reproducible_ndjson_that_imports(tmp_path: Path) -> None:
    a, b = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    start = "--seed"
    for out in (a, b):
        r = run("simulate", "--output", str(out), start, "11", "--executions", "12", "--days", "2")
        assert r.returncode == 0, r.stderr
    lines = a.read_text().splitlines()
    assert len(lines) > 50
    types = {json.loads(line)["details"]["type"] for line in lines}
    assert {"orca:pipeline:starting", "orca:stage:complete", "orca:task:complete"} <= types
    # Same seed, same events (ids included), except for the wall-clock end of the window.
    ids_a = [json.loads(x).get("eventId") for x in lines]
    ids_b = [json.loads(x).get("eventId") for x in b.read_text().splitlines()]
    assert ids_a == ids_b
    db = str(tmp_path / "sim.db")
    r = run("import", str(a), "--database", db, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["stored"] == len(lines)  # no duplicates asked for: every event is new


def test_simulate_needs_exactly_one_destination() -> None:
    r = run("simulate")
    assert r.returncode == 2 and "exactly one of --output" in r.stderr
