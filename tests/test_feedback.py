"""The feedback store: joins, scores, bad input, restarts, retention and a corrupt file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.observe.feedback import (
    MAX_BATCH,
    FeedbackError,
    FeedbackStore,
    FeedbackStoreError,
    Prediction,
    ShadowPrediction,
    parse_feedback_body,
)

T0 = 1_700_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "feedback.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[FeedbackStore]:
    s = FeedbackStore(db, retention_s=3600, max_rows=1000)
    yield s
    s.close()


def labels(store: FeedbackStore, backend: str, predicted: list[str], start: int = 0) -> None:
    store.remember_many(Prediction(f"{backend}-{start + i}", "fraud", backend, T0 + i, p)
                        for i, p in enumerate(predicted))


def test_join_and_accuracy(store: FeedbackStore) -> None:
    labels(store, "v1", ["cat"] * 10)
    labels(store, "v2", ["cat"] * 10)
    truth = ["cat"] * 8 + ["dog"] * 2
    result = store.feedback([{"request_id": f"v1-{i}", "label": t} for i, t in enumerate(truth)]
                            + [{"request_id": f"v2-{i}", "label": "cat"} for i in range(10)], now=T0 + 60)
    assert result.count("accepted") == 20 and result.status == 200
    assert {s.correct for s in result.scored if s.backend == "v2"} == {True}
    q = store.quality("fraud", primary="v1", candidate="v2")
    v1 = q["backends"]["v1"]
    assert (v1["labelled"], v1["correct"], v1["accuracy"]["rate"], v1["pending"]) == (10, 8, 0.8, 0)
    assert v1["accuracy"]["low"] < 0.8 < v1["accuracy"]["high"]
    delta = q["accuracy_delta"]
    assert delta["delta"] == pytest.approx(0.2) and delta["low"] < 0.2 < delta["high"]
    assert delta["low"] < 0  # ten labels each prove nothing
    assert store.accepted == 20


def test_numeric_labels_match_their_spelling(store: FeedbackStore) -> None:
    store.remember("a", "r", "v1", T0, 1.0)
    store.remember("b", "r", "v1", T0, "2")
    result = store.feedback([{"request_id": "a", "label": 1}, {"request_id": "b", "label": 2.0}], now=T0)
    assert [s.correct for s in result.scored] == [True, True]


def test_regression_errors(store: FeedbackStore) -> None:
    for i, predicted in enumerate([1.0, 2.0, 3.0, 4.0]):
        store.remember(f"r{i}", "price", "v1", T0, predicted, kind="value")
    items = [{"request_id": "r0", "value": 2.0}, {"request_id": "r1", "label": 2}, {"request_id": "r2", "value": 0},
             {"request_id": "r3", "label": "four"}]
    result = store.feedback(items, now=T0)
    assert [o for _, o in result.outcomes][:3] == ["accepted"] * 3
    assert result.outcomes[3][1].startswith("invalid: request 'r3' predicted a value")
    v1 = store.quality("price")["backends"]["v1"]
    assert v1["valued"] == 3 and v1["mae"] == pytest.approx(4 / 3) and v1["rmse"] == pytest.approx((10 / 3) ** 0.5)
    assert v1["pending"] == 1  # r3 is still waiting for a usable answer


def test_unknown_duplicate_and_invalid(store: FeedbackStore) -> None:
    labels(store, "v1", ["a", "b"])
    items = [
        {"request_id": "v1-0", "label": "a"},
        {"request_id": "v1-0", "label": "a"},  # duplicate within one batch
        {"request_id": "nope", "label": "a"},
        {"request_id": "v1-1", "label": None},
        {"request_id": "v1-1", "label": "b", "extra": 1},
        {"request_id": "v1-1", "label": "b", "value": 1.0},
        {"request_id": 5, "label": "b"},
        {"request_id": "v1-1", "value": 1.0},  # a label prediction answered with a value
        {"request_id": "v1-1", "label": True},
        "not an object",
        {"request_id": "v1-1", "value": float("nan")},
    ]
    result = store.feedback(items, now=T0)
    got = [o for _, o in result.outcomes]
    assert got[:3] == ["accepted", "duplicate", "unknown_request_id"]
    assert all(o.startswith("invalid: ") for o in got[3:])
    assert "unknown field 'extra'" in got[4] and "exactly one of label or value" in got[5]
    assert result.outcomes[6][0] is None and "request_id must be a string" in got[6]
    assert (store.accepted, store.duplicate, store.unknown, store.invalid) == (1, 1, 1, 8)
    assert store.feedback([{"request_id": "v1-0", "label": "b"}], now=T0).status == 409  # answered already
    assert store.feedback([{"request_id": "zzz", "label": "b"}], now=T0).status == 404
    assert store.feedback([{"request_id": "zzz"}], now=T0).status == 422
    assert result.to_json()["invalid"] == 8


def test_feedback_that_cannot_be_scored_says_so(store: FeedbackStore) -> None:
    store.remember_many([Prediction("x", "r", "v1", T0, None, "none", note="outputs 'foo' not recognised")])
    result = store.feedback([{"request_id": "x", "label": "a"}], now=T0)
    assert result.outcomes == (("x", "unscorable: outputs 'foo' not recognised"),)
    assert result.status == 422 and result.to_json()["unscorable"] == 1 and result.count("accepted") == 0
    assert store.quality("r")["backends"]["v1"]["unscored"] == 1
    assert store.feedback([{"request_id": "x", "label": "a"}], now=T0).status == 409  # recorded all the same


def test_integer_predictions_score_as_labels_or_values_by_the_feedback(store: FeedbackStore) -> None:
    store.remember_many([Prediction(f"n{i}", "r", "v1", T0, p, "number") for i, p in enumerate([0, 1, 1, 3])])
    result = store.feedback([{"request_id": "n0", "label": 0}, {"request_id": "n1", "label": "1"},
                             {"request_id": "n2", "label": 0}, {"request_id": "n3", "value": 2.5}], now=T0)
    assert result.count("accepted") == 4
    v1 = store.quality("r")["backends"]["v1"]
    assert (v1["labelled"], v1["correct"], v1["valued"], v1["mae"]) == (3, 2, 1, 0.5)


def test_shadow_predictions_are_scored_beside_the_live_ones(store: FeedbackStore) -> None:
    store.remember_many([Prediction(f"s{i}", "r", "v1", T0, "a") for i in range(4)],
                        [ShadowPrediction(f"s{i}", "v2", "a" if i < 3 else "b") for i in range(4)])
    store.remember_many([], [ShadowPrediction("never-live", "v2", "a")])
    assert store.shadow_unjoined == 1
    assert store.quality("r")["backends"]["v2"]["pending"] == 4
    result = store.feedback([{"request_id": f"s{i}", "label": "a"} for i in range(4)], now=T0)
    assert result.count("accepted") == 4 and {s.backend for s in result.scored} == {"v1", "v2"}
    backends = store.quality("r", "v1", "v2")["backends"]
    assert (backends["v1"]["correct"], backends["v2"]["correct"]) == (4, 3)


def test_a_version_1_file_is_migrated(db: Path) -> None:
    import sqlite3
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.executescript("""CREATE TABLE predictions (request_id TEXT PRIMARY KEY, route TEXT NOT NULL,
            backend TEXT NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL, prediction, truth, answered_at REAL);
            INSERT INTO predictions VALUES ('old', 'r', 'v1', 1700000000, 'label', 'a', NULL, NULL);
            PRAGMA user_version=1;""")
    conn.close()
    store = FeedbackStore(db)
    try:
        assert store.feedback([{"request_id": "old", "label": "a"}], now=T0).count("accepted") == 1
    finally:
        store.close()


def test_first_prediction_for_a_request_id_wins(store: FeedbackStore) -> None:
    store.remember("x", "r", "v1", T0, "a")
    store.remember("x", "r", "v2", T0, "b")
    assert store.conflicts == 1 and store.remembered == 1
    assert store.feedback([{"request_id": "x", "label": "a"}], now=T0).scored[0].backend == "v1"


@pytest.mark.parametrize(("raw", "status", "message"), [
    (b"{not json", 400, "not valid JSON"),
    (b'"a string"', 400, "must be an object"),
    (b"[]", 400, "empty"),
    (json.dumps([{"request_id": "a", "label": 1}] * (MAX_BATCH + 1)).encode(), 413, "limit is 1000"),
    (b" " * (1024 * 1024 + 1), 413, "bytes"),
    (b"\xff\xfe", 400, "not valid JSON"),
])
def test_malformed_bodies(raw: bytes, status: int, message: str) -> None:
    with pytest.raises(FeedbackError, match=message) as info:
        parse_feedback_body(raw)
    assert info.value.status == status


def test_body_shapes() -> None:
    assert parse_feedback_body(b'{"request_id": "a", "label": 1}') == [{"request_id": "a", "label": 1}]
    batch = [{"request_id": str(i), "label": "x"} for i in range(MAX_BATCH)]
    assert parse_feedback_body(json.dumps(batch).encode()) == batch


def test_restart_keeps_pending_predictions_and_aggregates(db: Path) -> None:
    first = FeedbackStore(db, retention_s=3600, max_rows=1000)
    labels(first, "v1", ["a", "a", "b"])
    first.feedback([{"request_id": "v1-0", "label": "a"}], now=T0)
    first.close()
    second = FeedbackStore(db, retention_s=3600, max_rows=1000)
    try:
        result = second.feedback([{"request_id": "v1-0", "label": "a"}, {"request_id": "v1-1", "label": "b"}], now=T0)
        assert [o for _, o in result.outcomes] == ["duplicate", "accepted"]
        v1 = second.quality("fraud")["backends"]["v1"]
        assert (v1["labelled"], v1["correct"], v1["pending"]) == (2, 1, 1)
    finally:
        second.close()


def test_retention_and_row_limit(db: Path) -> None:
    store = FeedbackStore(db, retention_s=100, max_rows=5)
    try:
        store.remember_many(Prediction(f"r{i}", "r", "v1", T0 + i * 10, "a") for i in range(20))
        assert store.prune(now=T0 + 200) == 15  # 10 older than 100 s, then 5 more beyond max_rows
        result = store.feedback([{"request_id": "r0", "label": "a"}, {"request_id": "r14", "label": "a"},
                                 {"request_id": "r15", "label": "a"}], now=T0)
        assert [o for _, o in result.outcomes] == ["unknown_request_id", "unknown_request_id", "accepted"]
        assert store.pruned == 15
    finally:
        store.close()


def test_corrupt_file_is_reported_with_its_path(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(8192))
    with pytest.raises(FeedbackStoreError, match="not a database") as info:
        FeedbackStore(db)
    assert info.value.path == db and str(db) in str(info.value)


def test_another_schema_version_is_refused(db: Path) -> None:
    FeedbackStore(db).close()
    import sqlite3
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=7")
    conn.close()
    with pytest.raises(FeedbackStoreError, match="schema version 7"):
        FeedbackStore(db)


async def test_run_uses_the_store_thread(store: FeedbackStore) -> None:
    await store.run(store.remember, "a", "r", "v1", T0, "x")
    result = await store.run(store.feedback, [{"request_id": "a", "label": "x"}], T0)
    assert result.count("accepted") == 1
    assert [a.labelled for a in await store.run(store.aggregates)] == [1]
