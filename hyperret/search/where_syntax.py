"""The syntax of ``where`` texts: a tokenizer and a recursive-descent parser, with the limits.

The grammar, the limits and the meaning of a ``where`` text are documented in
:mod:`hyperret.search.predicates`, which compiles it. This module knows no
schema and no Arrow: :func:`parse` checks the text's length, tokenizes it and
walks the grammar, handing every column, predicate and connective to a
:class:`WhereBuilder` as soon as it is read. The builder resolves and
type-checks what it is given, so a text with several problems reports the
first one in reading order. Every problem raises
:class:`~hyperret.errors.InvalidInputError` with a one-line message; syntax
errors give the 1-based character position.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..errors import InvalidInputError

#: The longest ``where`` text accepted, in characters.
MAX_LENGTH = 4096
#: The deepest nesting of parentheses and ``not`` accepted.
MAX_DEPTH = 64
KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "between", "true", "false"})

_TOKEN = re.compile(
    r"""
     (?P<ws>[ \t\r\n]+)
    |(?P<number>-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>==|!=|<=|>=|=|<|>)
    |(?P<punct>[(),])
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<quoted>`(?:[^`\\]|\\.)*`)
    """,
    re.VERBOSE | re.DOTALL | re.ASCII,
)
_STRING_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_NAME_ESCAPES = {"\\": "\\", "`": "`"}


# ------------------------------------------------------------------ tokens
@dataclass(frozen=True)
class Token:
    """One lexical token: its kind, value, 1-based position and source text."""

    kind: str  # ident, quoted, number, string, op, punct, end
    value: Any
    pos: int
    text: str


@dataclass(frozen=True)
class Value:
    """A literal of the grammar: ``kind`` is ``number``, ``string`` or ``bool``."""

    kind: str
    value: Any
    pos: int
    text: str


def show(text: str) -> str:
    """A token's text for a one-line message (quoted, escaped, shortened)."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def syntax_error(pos: int, what: str) -> InvalidInputError:
    """The error for a syntax problem at 1-based ``pos``."""
    return InvalidInputError(f"invalid where clause at position {pos}: {what}")


def _unescape(body: str, escapes: dict[str, str], pos: int) -> str:
    """Resolve the backslash escapes of a quoted token's ``body`` (which starts at ``pos``)."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]  # the token's regex guarantees a character after a backslash
            if nxt not in escapes:
                raise syntax_error(pos + i, f"unknown escape {show(ch + nxt)}")
            out.append(escapes[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _number(text: str, pos: int) -> int | float:
    """The value of a number token: an int, or a finite float."""
    if any(c in text for c in ".eE"):
        v = float(text)
        if not math.isfinite(v):
            raise syntax_error(pos, f"number {show(text)} is out of range")
        return v
    n = int(text)
    if abs(n) >= 2**64:
        raise syntax_error(pos, f"number {show(text)} is out of range")
    return n


def _token(kind: str, text: str, pos: int) -> Token:
    """A token from its regex group name and matched text."""
    if kind == "number":
        return Token(kind, _number(text, pos), pos, text)
    if kind == "string":
        return Token(kind, _unescape(text[1:-1], _STRING_ESCAPES, pos + 1), pos, text)
    if kind == "quoted":
        name = _unescape(text[1:-1], _NAME_ESCAPES, pos + 1)
        if not name:
            raise syntax_error(pos, "empty column name ``")
        return Token(kind, name, pos, text)
    return Token(kind, text, pos, text)


def _bad_character(text: str, i: int) -> InvalidInputError:
    """The error for text at index ``i`` that starts no token."""
    ch = text[i]
    if ch in "'\"":
        return syntax_error(i + 1, f"unterminated string starting with {ch}")
    if ch == "`":
        return syntax_error(i + 1, "unterminated column name starting with `")
    return syntax_error(i + 1, f"unexpected character {show(ch)}")


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with an ``end`` token."""
    out: list[Token] = []
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            raise _bad_character(text, i)
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_token(kind, m.group(), i + 1))
        i = m.end()
    out.append(Token("end", None, len(text) + 1, "end of input"))
    return out


# ----------------------------------------------------------------- builder
E = TypeVar("E")  # what the builder makes of an expression
C = TypeVar("C")  # what the builder makes of a column


class WhereBuilder(Protocol[E, C]):
    """What the parser hands each piece of a ``where`` text to, in reading order.

    Any method may raise :class:`~hyperret.errors.InvalidInputError` (an
    unknown column, a value of the wrong type); parsing stops there.
    """

    def column(self, name: str, pos: int) -> C:
        """The column ``name`` named at ``pos`` (backquotes and escapes resolved)."""
        ...

    def compare(self, col: C, op: str, value: Value) -> E:
        """``col <op> value``, ``op`` one of ``= == != < <= > >=``."""
        ...

    def is_in(self, col: C, values: list[Value]) -> E:
        """``col in (values...)``."""
        ...

    def between(self, col: C, lo: Value, hi: Value, pos: int) -> E:
        """``col between lo and hi``; ``pos`` is where ``between`` (or ``not``) stands."""
        ...

    def is_null(self, col: C) -> E:
        """``col is null``."""
        ...

    def bare(self, col: C) -> E:
        """A column on its own (a boolean column: ``col = true``)."""
        ...

    def negate(self, expr: E) -> E:
        """``not expr``."""
        ...

    def all_of(self, items: list[E]) -> E:
        """``items`` joined by ``and`` (one item: that item)."""
        ...

    def any_of(self, items: list[E]) -> E:
        """``items`` joined by ``or`` (one item: that item)."""
        ...


# ------------------------------------------------------------------ parser
def _is_keyword(tok: Token, word: str) -> bool:
    """Whether ``tok`` is the (case-insensitive) keyword ``word``."""
    return tok.kind == "ident" and tok.value.lower() == word


def _describe(tok: Token) -> str:
    """A token for a message: ``end of input`` or its quoted text."""
    return tok.text if tok.kind == "end" else show(tok.text)


class Parser(Generic[E, C]):
    """Recursive descent over the tokens of one ``where`` text, reporting to a builder."""

    def __init__(self, tokens: list[Token], builder: WhereBuilder[E, C]):
        self.tokens = tokens
        self.builder = builder
        self.i = 0
        self.depth = 0

    # -- token helpers
    @property
    def tok(self) -> Token:
        """The next token."""
        return self.tokens[self.i]

    def advance(self) -> Token:
        """Consume and return the next token."""
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def accept(self, word: str) -> bool:
        """Consume the keyword ``word`` if it comes next."""
        if _is_keyword(self.tok, word):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, text: str, what: str) -> Token:
        """Consume a token of ``kind`` and ``text`` or raise, naming ``what`` was expected."""
        tok = self.tok
        if tok.kind != kind or tok.text != text:
            raise syntax_error(tok.pos, f"expected {what}, got {_describe(tok)}")
        return self.advance()

    def expect_keyword(self, word: str, what: str) -> None:
        """Consume the keyword ``word`` or raise, naming ``what`` was expected."""
        if not self.accept(word):
            raise syntax_error(self.tok.pos, f"expected {what}, got {_describe(self.tok)}")

    def enter(self, pos: int) -> None:
        """Go one nesting level deeper (raises past :data:`MAX_DEPTH`)."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise syntax_error(pos, f"nested deeper than {MAX_DEPTH} levels")

    # -- grammar
    def parse(self) -> E:
        """The whole text: ``where``."""
        if self.tok.kind == "end":
            raise InvalidInputError("empty where clause")
        expr = self.or_expr()
        if self.tok.kind != "end":
            raise syntax_error(self.tok.pos, f"expected 'and', 'or' or the end, got {_describe(self.tok)}")
        return expr

    def or_expr(self) -> E:
        """``and_expr { "or" and_expr }``."""
        items = [self.and_expr()]
        while self.accept("or"):
            items.append(self.and_expr())
        return self.builder.any_of(items)

    def and_expr(self) -> E:
        """``not_expr { "and" not_expr }``."""
        items = [self.not_expr()]
        while self.accept("and"):
            items.append(self.not_expr())
        return self.builder.all_of(items)

    def not_expr(self) -> E:
        """``"not" not_expr | primary``."""
        pos = self.tok.pos
        if not self.accept("not"):
            return self.primary()
        self.enter(pos)
        expr = self.builder.negate(self.not_expr())
        self.depth -= 1
        return expr

    def primary(self) -> E:
        """``"(" or_expr ")" | predicate``."""
        if self.tok.kind != "punct" or self.tok.text != "(":
            return self.predicate()
        self.enter(self.advance().pos)
        expr = self.or_expr()
        self.expect("punct", ")", "')'")
        self.depth -= 1
        return expr

    def predicate(self) -> E:
        """One comparison, ``in``, ``is null``, ``between`` or bare boolean column."""
        b = self.builder
        name, col = self.column()
        tok = self.tok
        if tok.kind == "op":
            self.advance()
            return b.compare(col, tok.text, self.value())
        if self.accept("is"):
            negate = self.accept("not")
            self.expect_keyword("null", "'null' after 'is'" if not negate else "'null' after 'is not'")
            return b.negate(b.is_null(col)) if negate else b.is_null(col)
        negate = self.accept("not")
        if self.accept("in"):
            expr = b.is_in(col, self.value_list())
        elif self.accept("between"):
            lo = self.value()
            self.expect_keyword("and", "'and' in 'between ... and ...'")
            expr = b.between(col, lo, self.value(), tok.pos)
        elif negate:
            raise syntax_error(self.tok.pos, f"expected 'in' or 'between' after 'not', got {_describe(self.tok)}")
        else:
            return self.bare_or_error(name, col)
        return b.negate(expr) if negate else expr

    def bare_or_error(self, name: str, col: C) -> E:
        """A bare (boolean) column ``name``, if what follows may end a predicate."""
        tok = self.tok
        ends = tok.kind == "end" or (tok.kind == "punct" and tok.text == ")") or \
            _is_keyword(tok, "and") or _is_keyword(tok, "or")
        if not ends:
            raise syntax_error(tok.pos, f"expected a comparison operator, 'in', 'is' or 'between' after column "
                                        f"{name!r}, got {_describe(tok)}")
        return self.builder.bare(col)

    def column(self) -> tuple[str, C]:
        """A column name (bare or backquoted) and what the builder makes of it."""
        tok = self.tok
        if tok.kind == "ident" and tok.value.lower() in KEYWORDS:
            raise syntax_error(tok.pos, f"expected a column name, got the keyword {show(tok.text)} "
                                        "(backquote a column of that name)")
        if tok.kind not in ("ident", "quoted"):
            raise syntax_error(tok.pos, f"expected a column name, got {_describe(tok)}")
        self.advance()
        return tok.value, self.builder.column(tok.value, tok.pos)

    def value(self) -> Value:
        """A literal: number, string, ``true`` or ``false``."""
        tok = self.tok
        if tok.kind in ("number", "string"):
            self.advance()
            return Value(tok.kind, tok.value, tok.pos, tok.text)
        if _is_keyword(tok, "true") or _is_keyword(tok, "false"):
            self.advance()
            return Value("bool", tok.value.lower() == "true", tok.pos, tok.text)
        if _is_keyword(tok, "null"):
            raise syntax_error(tok.pos, "null is not a value: test for nulls with 'is null' or 'is not null'")
        raise syntax_error(tok.pos, "expected a value (a number, a quoted string, true or false), "
                                    f"got {_describe(tok)}")

    def value_list(self) -> list[Value]:
        """``"(" value { "," value } [ "," ] ")"``."""
        self.expect("punct", "(", "'(' after 'in'")
        values = [self.value()]
        while self.tok.kind == "punct" and self.tok.text == ",":
            self.advance()
            if self.tok.kind == "punct" and self.tok.text == ")":
                break
            values.append(self.value())
        self.expect("punct", ")", "',' or ')' in the value list")
        return values


def parse(text: str, builder: WhereBuilder[E, C]) -> E:
    """Check ``text`` against the limits, tokenize it and parse it into ``builder`` (raises InvalidInputError)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"a where clause must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise InvalidInputError(f"where clause too long: {len(text)} characters (at most {MAX_LENGTH})")
    return Parser(tokenize(text), builder).parse()
