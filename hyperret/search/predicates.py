"""Metadata predicates: a small, safe ``where`` grammar compiled to ``pyarrow.compute`` expressions.

The text comes from untrusted users, so it is parsed by a hand-written
recursive-descent parser (no ``eval``, no SQL engine), is at most
:data:`MAX_LENGTH` characters long and nests at most :data:`MAX_DEPTH` levels
(parentheses and ``not``). Every problem raises
:class:`~hyperret.errors.InvalidInputError` with a one-line message; syntax
errors give the 1-based character position.

Grammar (keywords are case-insensitive; whitespace is spaces, tabs, newlines)::

    where      = or_expr
    or_expr    = and_expr { "or" and_expr }
    and_expr   = not_expr { "and" not_expr }
    not_expr   = "not" not_expr | primary
    primary    = "(" or_expr ")" | predicate
    predicate  = column cmp_op value
               | column [ "not" ] "in" "(" value { "," value } [ "," ] ")"
               | column "is" [ "not" ] "null"
               | column [ "not" ] "between" value "and" value
               | column                          (* a boolean column: column = true *)
    cmp_op     = "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    column     = identifier | "`" { any character but ` and \\ | "\\`" | "\\\\" } "`"
    identifier = letter_ { letter_ | digit }      (* [A-Za-z_][A-Za-z0-9_]*, not a keyword *)
    value      = number | string | "true" | "false"
    number     = [ "-" ] ( digits [ "." [ digits ] ] | "." digits ) [ ( "e" | "E" ) [ "+" | "-" ] digits ]
    string     = "'" { character | escape } "'" | '"' { character | escape } '"'
    escape     = "\\'" | '\\"' | "\\\\" | "\\n" | "\\t" | "\\r"

Precedence: ``not`` binds tighter than ``and``, which binds tighter than ``or``.
Keywords: ``and or not in is null between true false`` (backquote a column of
such a name). There is no ``null`` value: test for nulls with ``is [not] null``.
The tokenizer, the parser and the limits live in :mod:`hyperret.search.where_syntax`;
this module types what it reads against a schema and builds the expression.

Columns are checked against the schema: an unknown column, the vector column
``space``, or a value of the wrong type (a number against a string column, a
string against a numeric one, an ordering of booleans) is an error. Numeric
columns (integers, floats, decimals) take numbers, string columns (also
dictionary-encoded or views) quoted strings, boolean columns ``true``/``false``
and ``=``/``!=``/``in`` only; other types (timestamps, lists, binary) take only
``is [not] null``.

Nulls follow SQL's three-valued logic: a comparison, ``in`` or ``between`` with
a null is null, ``not null`` is null, and a row whose result is null does not
match; NaN is not null. A column a shard lacks counts as all-null for that
shard. An integer column compared with a fraction is compared as float64; an
integer outside the column type's range compares as it would mathematically.

Examples::

    cls = 'U' and radius < 1.5
    concept in (1, 2, 3) or not unsafe_label
    `source file` is not null and score between 0.2 and 0.8
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..errors import InvalidInputError
from ..storage.shards import SAFETY_COLUMNS, shard_schema
from .where_syntax import KEYWORDS, MAX_DEPTH, MAX_LENGTH, Token, Value, parse, show, syntax_error, tokenize

if TYPE_CHECKING:
    from ..storage.snapshot import Snapshot

__all__ = [
    "FORBIDDEN_COLUMNS", "KEYWORDS", "MAX_DEPTH", "MAX_LENGTH", "Column", "Token", "Value", "available",
    "balanced", "bare", "between", "compare", "compile_where", "evaluate", "is_in", "is_null", "parse_where",
    "referenced_columns", "shard_columns", "snapshot_schema", "syntax_error", "tokenize", "type_kind", "where_mask",
]

#: Columns a predicate may not use (the vectors).
FORBIDDEN_COLUMNS = frozenset({"space"})
#: At most this many names in an "unknown column" message.
_LISTED_COLUMNS = 40
_COMPARE = {"=": pc.equal, "==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
            ">": pc.greater, ">=": pc.greater_equal}
#: The result of a comparison with an integer above (below) the column type's range.
_ABOVE = {"=": False, "==": False, "!=": True, "<": True, "<=": True, ">": False, ">=": False}
_BELOW = {"=": False, "==": False, "!=": True, "<": False, "<=": False, ">": True, ">=": True}
_NULL_BOOL = pa.scalar(None, pa.bool_())
_TAKES = {"number": "numbers", "string": "quoted strings", "bool": "true or false"}
_VALUE_NAMES = {"number": "number", "string": "string", "bool": "boolean"}


# ------------------------------------------------------------ column types
def _value_type(t: pa.DataType) -> pa.DataType:
    """The type a column is compared as (dictionaries decoded, views and decimals cast)."""
    if pa.types.is_dictionary(t):
        return _value_type(t.value_type)
    if pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_float16(t):
        return pa.float32()
    if _is_string_view(t):
        return pa.large_string()
    return t


def _is_string_view(t: pa.DataType) -> bool:
    """Whether ``t`` is ``string_view`` (pyarrow >= 16)."""
    check = getattr(pa.types, "is_string_view", None)
    return bool(check(t)) if check is not None else False


def type_kind(t: pa.DataType) -> str:
    """What values a column of type ``t`` compares with: ``number``, ``string``, ``bool``, ``null`` or ``other``."""
    vt = _value_type(t)
    if pa.types.is_boolean(vt):
        return "bool"
    if pa.types.is_integer(vt) or pa.types.is_floating(vt):
        return "number"
    if pa.types.is_string(vt) or pa.types.is_large_string(vt):
        return "string"
    if pa.types.is_null(vt):
        return "null"
    return "other"


def _operand(name: str, t: pa.DataType) -> pc.Expression:
    """The expression of column ``name`` as compared (cast where :func:`_value_type` says)."""
    vt = _value_type(t)
    return pc.field(name) if vt == t else pc.field(name).cast(vt)


def _known(operand: pc.Expression, value: bool) -> pc.Expression:
    """``value`` where ``operand`` is not null, null where it is."""
    return pc.if_else(pc.is_null(operand), _NULL_BOOL, pa.scalar(value))


def _int_range(t: pa.DataType) -> tuple[int, int]:
    """The smallest and largest value of integer type ``t``."""
    info = np.iinfo(t.to_pandas_dtype())
    return int(info.min), int(info.max)


@dataclass(frozen=True)
class Column:
    """A column a predicate names: its name, Arrow type and where the name stands."""

    name: str
    type: pa.DataType
    pos: int

    @property
    def kind(self) -> str:
        """What values the column compares with (see :func:`type_kind`)."""
        return type_kind(self.type)

    @property
    def vtype(self) -> pa.DataType:
        """The type the column is compared as."""
        return _value_type(self.type)

    def operand(self) -> pc.Expression:
        """The column's expression, cast to :attr:`vtype` where needed."""
        return _operand(self.name, self.type)


def _check_value(col: Column, v: Value) -> None:
    """Raise unless value ``v`` may be compared with ``col``."""
    if col.kind == "null" or col.kind == v.kind:
        return
    if col.kind == "other":
        raise InvalidInputError(f"column {col.name!r} (position {col.pos}) is {col.type}: "
                                "only 'is null' and 'is not null' apply to it")
    raise InvalidInputError(f"type mismatch at position {v.pos}: column {col.name!r} ({col.type}) takes "
                            f"{_TAKES[col.kind]}, not the {_VALUE_NAMES[v.kind]} {show(v.text)}")


def _check_op(col: Column, op: str, pos: int) -> None:
    """Raise for an ordering (``<``, ``between``) of a boolean column."""
    if col.kind == "bool" and op not in ("=", "==", "!="):
        raise InvalidInputError(f"invalid where clause at position {pos}: column {col.name!r} is boolean; "
                                "only =, !=, in and is null apply to it")


# ------------------------------------------------------------- expressions
def compare(col: Column, op: str, v: Value) -> pc.Expression:
    """``col <op> v`` (null where the column is null)."""
    _check_value(col, v)
    _check_op(col, op, v.pos)
    operand, vt = col.operand(), col.vtype
    if col.kind == "null":
        return _known(operand, False)
    if col.kind == "number":
        if pa.types.is_integer(vt) and isinstance(v.value, int):
            lo, hi = _int_range(vt)
            if v.value > hi:
                return _known(operand, _ABOVE[op])
            if v.value < lo:
                return _known(operand, _BELOW[op])
            return _COMPARE[op](operand, pa.scalar(v.value, vt))
        if pa.types.is_integer(vt):
            operand = operand.cast(pa.float64())
        return _COMPARE[op](operand, pa.scalar(float(v.value), pa.float64()))
    return _COMPARE[op](operand, pa.scalar(v.value, vt))


def is_in(col: Column, values: list[Value]) -> pc.Expression:
    """``col in (values...)`` (null where the column is null)."""
    for v in values:
        _check_value(col, v)
    operand, vt = col.operand(), col.vtype
    if col.kind == "null":
        return _known(operand, False)
    raw = [v.value for v in values]
    if col.kind == "number" and pa.types.is_integer(vt) and all(isinstance(x, int) for x in raw):
        lo, hi = _int_range(vt)
        value_set = pa.array([x for x in raw if lo <= x <= hi], vt)
    elif col.kind == "number":
        operand = operand.cast(pa.float64())
        value_set = pa.array([float(x) for x in raw], pa.float64())
    else:
        value_set = pa.array(raw, vt)
    return pc.if_else(pc.is_null(operand), _NULL_BOOL, pc.is_in(operand, value_set=value_set))


def between(col: Column, lo: Value, hi: Value, pos: int) -> pc.Expression:
    """``col between lo and hi``: ``lo <= col <= hi``."""
    _check_op(col, "<=", pos)
    return pc.and_kleene(compare(col, ">=", lo), compare(col, "<=", hi))


def is_null(col: Column) -> pc.Expression:
    """``col is null`` (NaN is not null)."""
    return pc.is_null(pc.field(col.name))


def bare(col: Column) -> pc.Expression:
    """A boolean column on its own: ``col = true``."""
    if col.kind not in ("bool", "null"):
        raise InvalidInputError(f"invalid where clause at position {col.pos}: column {col.name!r} is {col.type}, "
                                f"not boolean; compare it with a value (e.g. {col.name} = ...)")
    return compare(col, "=", Value("bool", True, col.pos, "true"))


def balanced(combine: Any, items: list[pc.Expression]) -> pc.Expression:
    """``items`` combined pairwise into a tree of logarithmic depth."""
    while len(items) > 1:
        pairs = [combine(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        items = pairs + items[len(items) - len(items) % 2:]
    return items[0]


# ---------------------------------------------------------------- compiler
class _Compiler:
    """The :class:`~hyperret.search.where_syntax.WhereBuilder` of Arrow expressions against one schema."""

    def __init__(self, schema: pa.Schema):
        self.types: dict[str, pa.DataType] = {}
        for f in schema:
            self.types.setdefault(f.name, f.type)
        self.columns: set[str] = set()

    def column(self, name: str, pos: int) -> Column:
        """The schema's column ``name`` (raises for unknown and forbidden columns)."""
        if name in FORBIDDEN_COLUMNS:
            raise InvalidInputError(f"column {name!r} (position {pos}) holds the vectors and cannot be "
                                    "used in a where clause")
        if name not in self.types:
            raise InvalidInputError(f"unknown column {show(name)} at position {pos} "
                                    f"(available: {available(self.types)})")
        self.columns.add(name)
        return Column(name, self.types[name], pos)

    def compare(self, col: Column, op: str, value: Value) -> pc.Expression:
        """See :func:`compare`."""
        return compare(col, op, value)

    def is_in(self, col: Column, values: list[Value]) -> pc.Expression:
        """See :func:`is_in`."""
        return is_in(col, values)

    def between(self, col: Column, lo: Value, hi: Value, pos: int) -> pc.Expression:
        """See :func:`between`."""
        return between(col, lo, hi, pos)

    def is_null(self, col: Column) -> pc.Expression:
        """See :func:`is_null`."""
        return is_null(col)

    def bare(self, col: Column) -> pc.Expression:
        """See :func:`bare`."""
        return bare(col)

    def negate(self, expr: pc.Expression) -> pc.Expression:
        """``not expr`` (Kleene: ``not null`` is null)."""
        return pc.invert(expr)

    def all_of(self, items: list[pc.Expression]) -> pc.Expression:
        """``items`` joined by Kleene ``and``."""
        return balanced(pc.and_kleene, items)

    def any_of(self, items: list[pc.Expression]) -> pc.Expression:
        """``items`` joined by Kleene ``or``."""
        return balanced(pc.or_kleene, items)


def available(types: dict[str, pa.DataType]) -> str:
    """The usable column names of a schema, for a message."""
    names = [n for n in types if n not in FORBIDDEN_COLUMNS]
    shown = ", ".join(show(n) if not n.isidentifier() else n for n in names[:_LISTED_COLUMNS])
    more = len(names) - _LISTED_COLUMNS
    return (shown + f", ... ({more} more)" if more > 0 else shown) or "none"


# ------------------------------------------------------------------- API
def _check_evaluates(expr: pc.Expression, schema: pa.Schema, columns: set[str]) -> None:
    """Evaluate ``expr`` on an empty table of ``schema``: any type error Arrow finds becomes ours."""
    fields: dict[str, pa.Field] = {}
    for f in schema:
        fields.setdefault(f.name, f)
    empty = pa.schema([fields[n] for n in sorted(columns)]).empty_table()
    try:
        evaluate(empty, expr)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise InvalidInputError(f"where clause cannot be evaluated: {str(e).splitlines()[0]}") from None


def compile_where(text: str, schema: pa.Schema) -> tuple[pc.Expression, set[str]]:
    """The expression of ``text`` against ``schema`` and the columns it references."""
    compiler = _Compiler(schema)
    expr = parse(text, compiler)
    _check_evaluates(expr, schema, compiler.columns)
    return expr, compiler.columns


def parse_where(text: str, schema: pa.Schema) -> pc.Expression:
    """Compile ``text`` against ``schema`` (raises InvalidInputError)."""
    return compile_where(text, schema)[0]


def referenced_columns(text: str, schema: pa.Schema) -> set[str]:
    """The columns ``text`` names (it is compiled, so errors raise as in :func:`parse_where`)."""
    return compile_where(text, schema)[1]


def evaluate(table: pa.Table, expr: pc.Expression) -> np.ndarray:
    """``expr`` on every row of ``table`` -> ``(rows,)`` bool, null counted as False."""
    result = ds.dataset(table).to_table(columns={"m": expr}, use_threads=False).column("m")
    return np.asarray(result.fill_null(False).to_numpy(), dtype=bool).reshape(table.num_rows)


def _type_from_name(name: str) -> pa.DataType:
    """An Arrow type from a manifest's type name (``null`` where the name is not a simple alias)."""
    try:
        return pa.type_for_alias(name)
    except (ValueError, KeyError):
        return pa.null()


def snapshot_schema(snapshot: Snapshot) -> pa.Schema:
    """The columns of a snapshot's shards, each with its first non-null type, in first-seen order."""
    types: dict[str, pa.DataType] = {}
    if not snapshot.shards:
        types.update({f.name: f.type for f in shard_schema(snapshot.manifest.dim)})
        if snapshot.manifest.bounds is not None:
            types.update({SAFETY_COLUMNS[0]: pa.float32(), SAFETY_COLUMNS[1]: pa.bool_()})
        types.update({n: _type_from_name(t) for n, t in snapshot.manifest.metadata_columns.items()})
    for shard in snapshot.shards:
        for f in shard.table.schema:
            if f.name not in types or pa.types.is_null(types[f.name]):
                types[f.name] = f.type
    return pa.schema(list(types.items()))


def shard_columns(table: pa.Table, schema: pa.Schema, columns: set[str]) -> pa.Table:
    """The ``columns`` of a shard's ``table`` as typed in ``schema``; missing ones all-null."""
    out: dict[str, Any] = {}
    for name in sorted(columns):
        t = schema.field(name).type
        if name not in table.column_names:
            out[name] = pa.nulls(table.num_rows, t)
        else:
            col = table.column(name)
            out[name] = col if col.type == t else col.cast(t)
    return pa.table(out)


def where_mask(snapshot: Snapshot, text: str) -> np.ndarray:
    """(rows,) bool: True where a stored row matches (deleted rows included as stored; the caller masks deletions)."""
    schema = snapshot_schema(snapshot)
    expr, columns = compile_where(text, schema)
    parts = []
    for shard in snapshot.shards:
        try:
            parts.append(evaluate(shard_columns(shard.table, schema, columns), expr))
        except pa.ArrowException as e:
            raise InvalidInputError(f"where clause cannot be evaluated on shard {shard.entry.file}: "
                                    f"{str(e).splitlines()[0]}") from None
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
