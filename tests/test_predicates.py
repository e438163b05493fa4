"""The where grammar: parsing, typing, null logic, limits, and masks over a real multi-shard snapshot."""

from __future__ import annotations

from typing import cast

import numpy as np
import pyarrow as pa
import pytest

import hyperret
from hyperret.errors import InvalidInputError
from hyperret.geometry import lorentz
from hyperret.safety import calibrate
from hyperret.search.predicates import (
    MAX_DEPTH,
    MAX_LENGTH,
    evaluate,
    parse_where,
    referenced_columns,
    snapshot_schema,
    where_mask,
)
from hyperret.storage.snapshot import Snapshot
from hyperret.testing.synthetic import make_points

N = 12


def _table() -> pa.Table:
    """A small table with one column of each kind, nulls included."""
    return pa.table({
        "id": pa.array(np.arange(N), pa.int64()),
        "space": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * N), pa.float32()), 2),
        "n": pa.array([3, -1, 0, None, 7, 7, 2, 10, None, -5, 4, 1], pa.int32()),
        "u8": pa.array([0, 1, 2, 255, None, 5, 6, 7, 8, 9, 10, 11], pa.uint8()),
        "x": pa.array([0.5, 1.5, None, -2.0, 3.25, 0.0, 1.0, 2.0, 9.0, float("nan"), 1.5, -0.5], pa.float32()),
        "s": pa.array(["a", "b", "c", None, "a", "it's", "b", 'q"', "", "z", None, "a"]),
        "d": pa.array(["u", "v", "u", None, "w", "v", "u", "u", "v", None, "w", "u"]).dictionary_encode(),
        "b": pa.array([True, False, None, True, True, False, False, None, True, False, True, False]),
        "ts": pa.array([1, None, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], pa.timestamp("s")),
        "odd name": pa.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], pa.int64()),
    })


T = _table()
COL = {name: T.column(name).to_pylist() for name in T.column_names if name != "space"}


def _mask(text: str) -> list[bool]:
    return evaluate(T, parse_where(text, T.schema)).tolist()


def _ref(pred) -> list[bool]:
    """Python reference: ``pred(row) -> True/False/None`` (None: unknown, i.e. no match)."""
    rows = [{k: v[i] for k, v in COL.items()} for i in range(N)]
    return [pred(r) is True for r in rows]


def _cmp(v, f):
    """SQL comparison: None when ``v`` is null."""
    return None if v is None else f(v)


def _not(v):
    return None if v is None else not v


def _and(a, b):
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a, b):
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


# ------------------------------------------------------------ semantics
@pytest.mark.parametrize("text, pred", [
    ("n = 7", lambda r: _cmp(r["n"], lambda v: v == 7)),
    ("n == 7", lambda r: _cmp(r["n"], lambda v: v == 7)),
    ("n != 7", lambda r: _cmp(r["n"], lambda v: v != 7)),
    ("n < 2", lambda r: _cmp(r["n"], lambda v: v < 2)),
    ("n <= 2", lambda r: _cmp(r["n"], lambda v: v <= 2)),
    ("n > -1", lambda r: _cmp(r["n"], lambda v: v > -1)),
    ("n >= -1.5", lambda r: _cmp(r["n"], lambda v: v >= -1.5)),
    ("n < 2.5", lambda r: _cmp(r["n"], lambda v: v < 2.5)),
    ("x > 1", lambda r: _cmp(r["x"], lambda v: v > 1)),
    ("x <= 1.5", lambda r: _cmp(r["x"], lambda v: v <= 1.5)),
    ("x = -2e0", lambda r: _cmp(r["x"], lambda v: v == -2)),
    ("x != 0.5", lambda r: _cmp(r["x"], lambda v: v != 0.5)),
    ("u8 < 300", lambda r: _cmp(r["u8"], lambda v: v < 300)),
    ("u8 > -1", lambda r: _cmp(r["u8"], lambda v: v > -1)),
    ("u8 = 256", lambda r: _cmp(r["u8"], lambda v: v == 256)),
    ("u8 != -3", lambda r: _cmp(r["u8"], lambda v: v != -3)),
    ("u8 >= 255", lambda r: _cmp(r["u8"], lambda v: v >= 255)),
    ("s = 'a'", lambda r: _cmp(r["s"], lambda v: v == "a")),
    ('s = "a"', lambda r: _cmp(r["s"], lambda v: v == "a")),
    ("s > 'b'", lambda r: _cmp(r["s"], lambda v: v > "b")),
    ("s = 'it\\'s'", lambda r: _cmp(r["s"], lambda v: v == "it's")),
    ('s = "q\\""', lambda r: _cmp(r["s"], lambda v: v == 'q"')),
    ("s = ''", lambda r: _cmp(r["s"], lambda v: v == "")),
    ("d = 'u'", lambda r: _cmp(r["d"], lambda v: v == "u")),
    ("d in ('v', 'w')", lambda r: _cmp(r["d"], lambda v: v in ("v", "w"))),
    ("b", lambda r: r["b"]),
    ("b = true", lambda r: r["b"]),
    ("b != TRUE", lambda r: _not(r["b"])),
    ("b = False", lambda r: _not(r["b"])),
    ("not b", lambda r: _not(r["b"])),
    ("b in (false)", lambda r: _not(r["b"])),
    ("n in (7, 3, 1000)", lambda r: _cmp(r["n"], lambda v: v in (7, 3))),
    ("n not in (7, 3,)", lambda r: _cmp(r["n"], lambda v: v not in (7, 3))),
    ("n in (2.0, 4.5)", lambda r: _cmp(r["n"], lambda v: v in (2.0, 4.5))),
    ("u8 in (255, 256, -1)", lambda r: _cmp(r["u8"], lambda v: v == 255)),
    ("x in (1.5, 9)", lambda r: _cmp(r["x"], lambda v: v in (1.5, 9.0))),
    ("s in ('a', 'z')", lambda r: _cmp(r["s"], lambda v: v in ("a", "z"))),
    ("s not in ('a', 'z')", lambda r: _cmp(r["s"], lambda v: v not in ("a", "z"))),
    ("not s in ('a', 'z')", lambda r: _cmp(r["s"], lambda v: v not in ("a", "z"))),
    ("n between 0 and 4", lambda r: _cmp(r["n"], lambda v: 0 <= v <= 4)),
    ("n not between 0 and 4", lambda r: _cmp(r["n"], lambda v: not 0 <= v <= 4)),
    ("x between -1 and 1.5", lambda r: _cmp(r["x"], lambda v: -1 <= v <= 1.5)),
    ("s between 'a' and 'b'", lambda r: _cmp(r["s"], lambda v: "a" <= v <= "b")),
    ("n between 4 and 0", lambda r: False),
    ("n is null", lambda r: r["n"] is None),
    ("n IS NOT NULL", lambda r: r["n"] is not None),
    ("x is null", lambda r: r["x"] is None),  # NaN is not null
    ("ts is null", lambda r: r["ts"] is None),
    ("ts is not null and b", lambda r: _and(r["ts"] is not None, r["b"])),
    ("`odd name` >= 6", lambda r: r["odd name"] >= 6),
    ("`s` = 'b'", lambda r: _cmp(r["s"], lambda v: v == "b")),
    ("id < 3 or id > 9", lambda r: r["id"] < 3 or r["id"] > 9),
    # precedence: not > and > or
    ("n = 7 or s = 'a' and b", lambda r: _or(_cmp(r["n"], lambda v: v == 7),
                                             _and(_cmp(r["s"], lambda v: v == "a"), r["b"]))),
    ("(n = 7 or s = 'a') and b", lambda r: _and(_or(_cmp(r["n"], lambda v: v == 7),
                                                    _cmp(r["s"], lambda v: v == "a")), r["b"])),
    ("not n = 7 and b", lambda r: _and(_not(_cmp(r["n"], lambda v: v == 7)), r["b"])),
    ("not (n = 7 and b)", lambda r: _not(_and(_cmp(r["n"], lambda v: v == 7), r["b"]))),
    ("not not b", lambda r: r["b"]),
    ("b or not b", lambda r: _or(r["b"], _not(r["b"]))),  # unknown for a null b
    ("b AND n > 0 Or x < 0", lambda r: _or(_and(r["b"], _cmp(r["n"], lambda v: v > 0)),
                                           _cmp(r["x"], lambda v: v < 0))),
    ("\n\tn\n>\t0  ", lambda r: _cmp(r["n"], lambda v: v > 0)),
])
def test_matches_python_reference(text, pred):
    assert _mask(text) == _ref(pred)


def test_long_or_chain_and_referenced_columns():
    text = " or ".join(f"n = {i}" for i in range(-5, 300))
    assert _mask(text) == _ref(lambda r: _cmp(r["n"], lambda v: -5 <= v < 300))
    assert referenced_columns("n > 1 and (`odd name` = 2 or not b) or s is null", T.schema) == {
        "n", "odd name", "b", "s"}


def test_depth_and_length_limits_accept_the_bound():
    assert len(_mask("(" * MAX_DEPTH + "b" + ")" * MAX_DEPTH)) == N
    assert len(_mask("not " * MAX_DEPTH + "b")) == N
    text = "n = 1" + " " * (MAX_LENGTH - 5)
    assert len(text) == MAX_LENGTH and _mask(text) == _mask("n = 1")


# --------------------------------------------------------------- errors
def _error(text: str, schema: pa.Schema = T.schema) -> str:
    with pytest.raises(InvalidInputError) as e:
        parse_where(text, schema)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("text, position", [
    ("n = ", 5),
    ("n 7", 3),
    ("n = 7 s", 7),
    ("(n = 7", 7),
    ("n = 7)", 6),
    ("n in ()", 7),
    ("n in (1 2)", 9),
    ("n in 1", 6),
    ("n is 7", 6),
    ("n not = 1", 7),
    ("n between 1 or 2", 13),
    ("and = 1", 1),
    ("n = null", 5),
    ("n = abc", 5),
    ("n = 1e999", 5),
    ("n = 99999999999999999999999", 5),
    ("s = 'abc", 5),
    ("`s = 1", 1),
    ("s = 'a\\qb'", 7),
    ("`` = 1", 1),
    ("n = 1; drop table x", 6),
    ("1; drop", 2),
    ("n = 1 -- comment", 7),
    ("n = $1", 5),
    ("n = 1 && b", 7),
    ("é = 1", 1),
    ("or", 1),
    ("not", 4),
    ("n = 1 or", 9),
])
def test_syntax_errors_give_the_position(text, position):
    assert f"at position {position}:" in _error(text)


@pytest.mark.parametrize("text", [
    "__import__('os')",
    "__import__('os').system('ls')",
    "n = __import__('os')",
    "exec('1')",
    "n = 1 union select * from t",
    "' or '1'='1",
    "n = '1' or 1=1",
    "s = \"a\" or `space` is null",
    "lambda: 1",
    "n.__class__ = 1",
    "n = 0x10",
    "{n} = 1",
    "s = 'x' \x00",
])
def test_injection_like_input_is_rejected(text):
    _error(text)


def test_unknown_column_names_the_available_ones():
    msg = _error("nope = 1")
    assert "unknown column 'nope'" in msg and "position 1" in msg
    assert "n, u8, x, s" in msg and "'odd name'" in msg and "space" not in msg
    assert "unknown column 'N'" in _error("N = 1")  # names are case-sensitive


def test_the_vector_column_is_forbidden():
    for text in ("space is null", "`space` = 1", "n = 1 and not space"):
        assert "'space'" in _error(text)


@pytest.mark.parametrize("text, fragment", [
    ("s = 1", "column 's' (string) takes quoted strings, not the number '1'"),
    ("s in ('a', 2)", "type mismatch at position 12"),
    ("n = 'x'", "takes numbers, not the string"),
    ("n between 1 and 'z'", "type mismatch at position 17"),
    ("x > true", "takes numbers, not the boolean"),
    ("b = 1", "takes true or false"),
    ("b < true", "boolean; only"),
    ("b between false and true", "boolean; only"),
    ("d = 3", "takes quoted strings"),
    ("ts = 3", "only 'is null' and 'is not null'"),
    ("ts in (1)", "only 'is null' and 'is not null'"),
    ("n", "not boolean"),
    ("s and b", "not boolean"),
])
def test_type_mismatches(text, fragment):
    assert fragment in _error(text)


def test_limits_and_bad_arguments():
    assert "too long" in _error("n = 1" + " " * MAX_LENGTH)
    assert "too long" in _error("x" * 100_000)
    assert "nested deeper" in _error("(" * (MAX_DEPTH + 1) + "b" + ")" * (MAX_DEPTH + 1))
    assert "nested deeper" in _error("not " * (MAX_DEPTH + 1) + "b")
    assert "nested deeper" in _error("(" * 2000)  # stops before Python's recursion limit
    assert "empty" in _error("")
    assert "empty" in _error("  \n ")
    with pytest.raises(InvalidInputError, match="must be a string"):
        parse_where(cast(str, b"n = 1"), T.schema)


# ----------------------------------------------------- a real snapshot
@pytest.fixture(scope="module")
def snapshot_and_rows(tmp_path_factory):
    """A 3-shard index with bounds: shard 1 without ``tag``, shard 3 without any metadata; some rows deleted."""
    dim, curv = 8, 1.0
    cal = make_points(2000, dim, curv=curv, seed=1, n_concepts=8)
    bounds = calibrate(lorentz.radius(cal.space, curv), cal.modality, cal.unsafe, curv=curv)
    pts = make_points(500, dim, curv=curv, seed=2, n_concepts=8, classes=("V", "G"))
    path = tmp_path_factory.mktemp("predicates") / "ix"
    w = hyperret.Index.create(path, dim, curv=curv, preset="exact", bounds=bounds, modality="image")
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 1, 500)
    score_col = [None if i % 7 == 0 else float(v) for i, v in enumerate(score)]
    tag = [None if i % 5 == 0 else f"t{i % 3}" for i in range(500)]
    w.add(pts.space[:200], metadata={"cls": pts.cls[:200], "concept": pts.concept[:200],
                                     "score": pa.array(score_col[:200], pa.float64())})
    w.commit()
    w.add(pts.space[200:400], metadata={"cls": pts.cls[200:400], "concept": pts.concept[200:400],
                                        "score": pa.array(score_col[200:400], pa.float64()),
                                        "tag": pa.array(tag[200:400], pa.string())})
    w.commit()
    w.add(pts.space[400:])
    w.commit()
    w.delete(np.arange(0, 500, 11))
    w.commit()
    w.close()
    snap = Snapshot.open(path)
    assert len(snap.shards) == 3 and snap.rows == 500 and snap.deleted is not None
    rows = [{"id": i,
             "cls": str(pts.cls[i]) if i < 400 else None,
             "concept": int(pts.concept[i]) if i < 400 else None,
             "score": score_col[i] if i < 400 else None,
             "tag": tag[i] if 200 <= i < 400 else None} for i in range(500)]
    labels = snap.unsafe_rows()
    assert labels is not None and 0 < labels.sum() < 500
    for r, lab in zip(rows, labels):
        r["unsafe_label"] = bool(lab)
    return snap, rows


@pytest.mark.parametrize("text, pred", [
    ("cls = 'G'", lambda r: _cmp(r["cls"], lambda v: v == "G")),
    ("concept in (1, 3, 5)", lambda r: _cmp(r["concept"], lambda v: v in (1, 3, 5))),
    ("concept not in (1, 3, 5)", lambda r: _cmp(r["concept"], lambda v: v not in (1, 3, 5))),
    ("score between 0.25 and 0.5", lambda r: _cmp(r["score"], lambda v: 0.25 <= v <= 0.5)),
    ("score is null", lambda r: r["score"] is None),
    ("tag is null", lambda r: r["tag"] is None),
    ("tag = 't1'", lambda r: _cmp(r["tag"], lambda v: v == "t1")),
    ("tag != 't1'", lambda r: _cmp(r["tag"], lambda v: v != "t1")),
    ("not tag = 't1'", lambda r: _not(_cmp(r["tag"], lambda v: v == "t1"))),
    ("unsafe_label", lambda r: r["unsafe_label"]),
    ("not unsafe_label and cls = 'V'", lambda r: _and(not r["unsafe_label"], _cmp(r["cls"], lambda v: v == "V"))),
    ("id >= 450 or tag in ('t0') and score > 0.5",
     lambda r: _or(r["id"] >= 450, _and(_cmp(r["tag"], lambda v: v == "t0"), _cmp(r["score"], lambda v: v > 0.5)))),
])
def test_where_mask_on_a_real_snapshot(snapshot_and_rows, text, pred):
    snap, rows = snapshot_and_rows
    mask = where_mask(snap, text)
    assert mask.dtype == np.bool_ and mask.shape == (snap.rows,)
    expected = np.array([pred(r) is True for r in rows])
    np.testing.assert_array_equal(mask, expected)
    assert mask.any()


def test_where_mask_keeps_deleted_rows_and_row_order(snapshot_and_rows):
    snap, _ = snapshot_and_rows
    mask = where_mask(snap, "id < 100")
    np.testing.assert_array_equal(mask, snap.stored_ids() < 100)
    assert mask[0] and snap.deleted[0]  # deleted rows are evaluated as stored


def test_where_mask_errors_and_schema(snapshot_and_rows):
    snap, _ = snapshot_and_rows
    schema = snapshot_schema(snap)
    assert schema.field("tag").type == pa.string() and schema.field("unsafe_label").type == pa.bool_()
    for text in ("nope = 1", "space is null", "cls = 1", "tag = ", "concept in ('a')"):
        with pytest.raises(InvalidInputError):
            where_mask(snap, text)


def test_where_mask_reads_only_the_referenced_columns(snapshot_and_rows, monkeypatch):
    import hyperret.search.predicates as predicates

    snap, _ = snapshot_and_rows
    seen: list[list[str]] = []
    real = predicates.evaluate

    def spy(table, expr):
        seen.append(table.column_names)
        return real(table, expr)

    monkeypatch.setattr(predicates, "evaluate", spy)
    where_mask(snap, "cls = 'V' and score > 0.1")
    assert seen and all(sorted(names) == ["cls", "score"] for names in seen)
