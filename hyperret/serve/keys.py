"""API keys for ``hyperret serve``: a file of hashed keys, each with its permissions.

One key per line, ``NAME:SHA256:PERMS`` (``PERMS`` comma-separated; ``unsafe``
lets a request retrieve unsafe content on purpose: the ``outward`` policy and
``allow_unsafe``). Only the SHA-256 of a key is stored: keys are 32 random bytes
(:func:`new_key`), so a fast hash is enough. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError

PERMISSIONS = ("search", "unsafe")
_LINE = re.compile(r"^([A-Za-z0-9_.-]{1,64}):([0-9a-f]{64}):([a-z,]*)$")


@dataclass(frozen=True)
class Key:
    name: str
    digest: str
    permissions: frozenset[str]


def digest(key: str) -> str:
    """The SHA-256 (hex) a key file stores for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


class APIKeys:
    """The keys of a key file; :meth:`check` finds a presented key's entry in constant time per key."""

    def __init__(self, keys: list[Key]):
        self.keys = keys

    @classmethod
    def load(cls, path: str | Path) -> APIKeys:
        """Read a key file (a one-line error for a malformed line or an unknown permission)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise InvalidInputError(f"cannot read the key file {p}: {e.strerror}") from None
        keys = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = _LINE.match(line)
            if m is None:
                raise InvalidInputError(f"{p} line {n}: expected NAME:SHA256:PERMISSIONS")
            perms = frozenset(x for x in m.group(3).split(",") if x)
            unknown = perms - set(PERMISSIONS)
            if unknown:
                raise InvalidInputError(f"{p} line {n}: unknown permission {sorted(unknown)[0]!r} "
                                        f"(one of: {', '.join(PERMISSIONS)})")
            keys.append(Key(m.group(1), m.group(2), perms | {"search"}))
        return cls(keys)

    def check(self, presented: str | None) -> Key | None:
        """The entry of ``presented`` (None: no such key)."""
        if not presented:
            return None
        d = digest(presented)
        found = None
        for k in self.keys:
            if hmac.compare_digest(k.digest, d):
                found = k
        return found


def add_key(path: str | Path, name: str, permissions: list[str]) -> str:
    """Append a new key named ``name`` to the key file (created if absent); returns the key (shown once)."""
    bad = [x for x in permissions if x not in PERMISSIONS]
    if bad:
        raise InvalidInputError(f"unknown permission {bad[0]!r} (one of: {', '.join(PERMISSIONS)})")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise InvalidInputError(f"key name {name!r}: letters, digits, '.', '_' and '-' (at most 64)")
    p = Path(path)
    if p.exists() and any(k.name == name for k in APIKeys.load(p).keys):
        raise InvalidInputError(f"{p} already has a key named {name!r}")
    key = new_key()
    with open(p, "a") as f:
        f.write(f"{name}:{digest(key)}:{','.join(sorted(set(permissions)))}\n")
    return key
