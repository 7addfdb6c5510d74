"""The storage ceiling as its own process (pinned to the server core by the harness): a plain loop
inserting the same event bytes into the same backend with the same durability, ``--group`` per commit.

Prints one JSON line: {"events": n, "events_per_s": x}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backends import storage_ceiling
from bench.events import read_pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", required=True, help="a fresh SQLite file or postgresql:// URL")
    parser.add_argument("--rows", type=Path, required=True, help="pool file of single events, one per line")
    parser.add_argument("--count", type=int, required=True, help="events to insert")
    parser.add_argument("--group", type=int, required=True, help="events per commit")
    args = parser.parse_args()
    rows = list(read_pool(args.rows, 0, args.count))
    rate = storage_ceiling(args.database, rows, args.group)
    print(json.dumps({"events": len(rows), "events_per_s": rate}))


if __name__ == "__main__":
    main()
