"""The store contract: append-only, idempotent, durable, and every query filter answered correctly."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import make_record
from spintrail.query import Filters
from spintrail.store import PreparedEvent, Store, blobs
from spintrail.store.sqlite import MIGRATIONS, SqliteStore


def prepared(n: int, raw: bytes | None = None, text: str = "", **fields: Any) -> PreparedEvent:
    rec = make_record(n, **fields)
    return PreparedEvent(record=rec, raw=raw if raw is not None else json.dumps({"n": n}).encode(), text=text)


def ids(store: Store, **params: Any) -> list[int]:
    page = store.search(Filters.from_params(params), limit=1000)
    return [r.id for r in page.records if r.id is not None]


def test_append_assigns_increasing_ids_and_dedupes(store: Store) -> None:
    res = store.append([prepared(1), prepared(2), prepared(1)])
    assert [r.duplicate for r in res] == [False, False, True]
    assert res[2].id == res[0].id
    assert res[1].id > res[0].id
    again = store.append([prepared(2)])
    assert again[0].duplicate and again[0].id == res[1].id
    assert store.stats().events == 2


def test_record_round_trip(store: Store) -> None:
    [r] = store.append(
        [
            prepared(
                7,
                accounts=["prod", "prod-eu"],
                regions=["us-east-1"],
                server_groups=["checkout-prod-v042"],
                clusters=["checkout-prod"],
                namespaces=["payments"],
                tickets=["OPS-1", "OPS-2"],
                description="Résumé: déploiement",
                reason="because",
                execution_id="01HX",
                status="SUCCEEDED",
            )
        ]
    )
    got = store.get(r.id)
    assert got is not None
    assert got.accounts == ["prod", "prod-eu"]
    assert got.tickets == ["OPS-1", "OPS-2"]
    assert got.description == "Résumé: déploiement"
    assert got == store.get_by_event_id("evt-000007")
    assert store.get(r.id + 1000) is None


def test_raw_bytes_are_returned_exactly(store: Store) -> None:
    raws = [
        b'{"a": 1}',
        b'  {\n "x" : "\\u00e9\xc3\xa9" }  \n',
        b"",
        os.urandom(5000),
        json.dumps({"big": "x" * 3_000_000}).encode(),
    ]
    results = store.append([prepared(i, raw=r) for i, r in enumerate(raws)])
    for res, raw in zip(results, raws, strict=True):
        assert store.raw(res.id) == raw


def test_delta_chains_reproduce_every_event(store: Store) -> None:
    # Events of one execution grow like orca's snapshots; each is stored against the previous one.
    snapshot: dict[str, Any] = {"execution": {"id": "E1", "stages": []}}
    raws: list[bytes] = []
    for i in range(blobs.MAX_CHAIN * 2 + 5):
        snapshot["execution"]["stages"].append({"id": f"s{i}", "status": "SUCCEEDED", "context": {"i": i}})
        raws.append(json.dumps({"n": i, "content": snapshot}).encode())
    results = store.append(
        [prepared(i, raw=r, execution_id="E1", type="orca:stage:complete") for i, r in enumerate(raws)]
    )
    for res, raw in zip(results, raws, strict=True):
        assert store.raw(res.id) == raw
    st = store.stats()
    assert st.raw_bytes == sum(len(r) for r in raws)
    # The deltas make the stored size a small fraction of the raw size.
    assert st.stored_raw_bytes < st.raw_bytes / 10


def test_filters(store: Store) -> None:
    store.append(
        [
            prepared(
                1,
                user="alice",
                application="checkout",
                accounts=["prod"],
                regions=["us-east-1"],
                type="orca:pipeline:starting",
                status="RUNNING",
                execution_id="E1",
                source="orca",
                tickets=["OPS-1"],
                spinnaker_instance="prod-us",
                server_groups=["checkout-prod-v042"],
                clusters=["checkout-prod"],
                namespaces=["default"],
            ),
            prepared(
                2,
                user="bob",
                application="search",
                accounts=["staging"],
                regions=["eu-west-1"],
                type="orca:stage:complete",
                status="SUCCEEDED",
                execution_id="E2",
                source="orca",
            ),
            prepared(
                3,
                user="alice",
                application="search",
                accounts=["prod", "staging"],
                type="build",
                source="igor",
                status="SUCCESS",
            ),
        ]
    )
    assert ids(store) == [3, 2, 1]
    assert ids(store, user="alice") == [3, 1]
    assert ids(store, user=["alice", "bob"]) == [3, 2, 1]
    assert ids(store, application="search") == [3, 2]
    assert ids(store, account="prod") == [3, 1]
    assert ids(store, account="staging", user="bob") == [2]
    assert ids(store, region="eu-west-1") == [2]
    assert ids(store, server_group="checkout-prod-v042") == [1]
    assert ids(store, cluster="checkout-prod") == [1]
    assert ids(store, namespace="default") == [1]
    assert ids(store, type="orca:*") == [2, 1]
    assert ids(store, type="orca:pipeline:*") == [1]
    assert ids(store, type="build") == [3]
    assert ids(store, status="SUCCEEDED") == [2]
    assert ids(store, execution_id="E2") == [2]
    assert ids(store, source="igor") == [3]
    assert ids(store, ticket="OPS-1") == [1]
    assert ids(store, instance="prod-us") == [1]
    assert ids(store, user="nobody") == []
    t2 = 1_700_000_000_000 + 2000
    assert ids(store, since=str(t2)) == [3, 2]
    assert ids(store, until=str(t2)) == [1]


def test_full_text_search(store: Store) -> None:
    store.append(
        [
            prepared(1, text="Resize Server Group: checkout-prod-v042 alice@example.com OPS-77"),
            prepared(2, text="Deploy to Prod checkout-prod-v043 bob@example.com"),
            prepared(3, text="bake ami-0abc"),
        ]
    )
    assert ids(store, q="checkout-prod-v042") == [1]
    assert ids(store, q="prod-v042") == [1]
    assert ids(store, q="checkout") == [2, 1]
    assert ids(store, q="checkout bob") == [2]
    assert ids(store, q='"server group"') == [1]
    assert ids(store, q="alice@example.com") == [1]
    assert ids(store, q="ops-77") == [1]
    # Odd input never fails: FTS syntax characters are just not words.
    for odd in ['"', "AND", "NEAR(", "*", "a OR", "(", ")", "'", "-", "col:val", "^x", "\u0000", "🙂"]:
        store.search(Filters.from_params({"q": odd}), limit=5)
    assert ids(store, q="***") == []


def test_keyset_pagination_is_stable_while_events_arrive(store: Store) -> None:
    store.append([prepared(i, time=1_700_000_000_000 + (i // 3) * 1000) for i in range(50)])
    seen: list[int] = []
    cursor = None
    first = True
    while True:
        page = store.search(Filters(), limit=7, cursor=cursor)
        seen += [r.id for r in page.records if r.id is not None]
        if first:
            # Newer events arriving during paging do not shift the pages already being walked.
            store.append([prepared(100 + i, time=1_800_000_000_000) for i in range(5)])
            first = False
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == 50 == len(set(seen))
    times = [store.get(i).time for i in seen]  # type: ignore[union-attr]
    assert times == sorted(times, reverse=True)


def test_bad_cursor_is_a_value_error(store: Store) -> None:
    with pytest.raises(ValueError, match="cursor"):
        store.search(Filters(), cursor="not-a-cursor!")


def test_execution_is_ordered_by_event_time(store: Store) -> None:
    store.append(
        [
            prepared(1, execution_id="E", time=3000),
            prepared(2, execution_id="E", time=1000),
            prepared(3, execution_id="other", time=2000),
            prepared(4, execution_id="E", time=2000),
        ]
    )
    assert [r.event_id for r in store.execution("E")] == ["evt-000002", "evt-000004", "evt-000001"]


def test_concurrent_writers_share_commits(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(20):
                store.append([prepared(k * 1000 + i)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.stats().events == 160


def test_sqlite_reopen_keeps_everything_and_migrations_run_once(tmp_path: Path) -> None:
    path = tmp_path / "reopen.db"
    s = SqliteStore(path)
    s.append([prepared(i) for i in range(10)])
    s.close()
    s = SqliteStore(path)
    try:
        assert s.stats().events == 10
        assert s.append([prepared(3)])[0].duplicate
        versions = s._read("SELECT version FROM schema_migrations WHERE component = 'events'")
        assert [v for (v,) in versions] == [v for v, _ in MIGRATIONS]
        assert hashlib.sha256(s.raw(1) or b"").hexdigest() == hashlib.sha256(b'{"n": 0}').hexdigest()
    finally:
        s.close()


def test_sqlite_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    from spintrail.store import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="does not exist"):
        SqliteStore(tmp_path / "nope" / "x.db")


def test_write_hooks_run_in_the_commit_and_roll_back_with_it(store: Store) -> None:
    from spintrail.store import StoreError

    seen: list[list[int]] = []

    def hook(conn: Any, written: list[Any]) -> None:
        seen.append([w.id for w in written])
        if any(w.item.record.event_id == "evt-000666" for w in written):
            raise RuntimeError("hook refused")

    store.write_hooks.append(hook)
    res = store.append([prepared(1), prepared(2), prepared(1)])
    assert seen[-1] == [res[0].id, res[1].id]  # duplicates are not handed to hooks
    with pytest.raises(StoreError):
        store.append([prepared(666)])
    assert store.get_by_event_id("evt-000666") is None
    assert store.append([prepared(3)])[0].duplicate is False


def test_reads_honour_the_application_scope(store: Store) -> None:
    """A request limited to some applications sees nothing else through any read, in every backend."""
    from spintrail import scope

    a, b, none = (
        r.id
        for r in store.append(
            [
                prepared(1, application="alpha", execution_id="X", text="shared words"),
                prepared(2, application="beta", execution_id="X", text="shared words"),
                prepared(3, application=None, execution_id="X", text="shared words"),
            ]
        )
    )
    with scope.limited_to({"alpha"}):
        assert ids(store) == [a]
        assert ids(store, application="beta") == []
        assert ids(store, application=["alpha", "beta"]) == [a]
        assert ids(store, q="shared") == [a]
        assert store.get(b) is None and store.get(none) is None and store.get(a) is not None
        assert store.get_by_event_id("evt-000002") is None
        assert store.raw(b) is None and store.raw(a) is not None
        assert [r.id for r in store.execution("X")] == [a]
    with scope.limited_to(set()):
        assert ids(store) == [] and store.get(a) is None and store.execution("X") == []
    assert sorted(ids(store)) == sorted([a, b, none])  # outside a request: everything
    assert store.append([prepared(4, raw=b"")])[0].duplicate is False
    kept_nothing = PreparedEvent(record=make_record(5), raw=b"", keep_raw=False)
    (res,) = store.append([kept_nothing])
    assert store.raw(res.id) is None  # raw_events = drop
