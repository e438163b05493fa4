"""What ``hyperret serve`` serves, without HTTP: the open indexes, the model, the permission checks.

Indexes open read-only and move to new commits on their own (a version check at
most once per ``refresh_seconds``, one small file read), so a writer can commit
while the server runs. The model loads on the first text or image query. Safety
is the server's decision: a request for unsafe content (the ``outward`` policy,
``allow_unsafe``) needs an API key with the ``unsafe`` permission, and with no keys
configured it is refused. A parts file (:mod:`hyperret.distributed.sharded`) is served as
one index over its parts, each on a Ray actor (``ray_address``: a cluster, else local Ray).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HyperretError, InvalidInputError
from ..index import Index
from ..safety.planner import POLICIES
from .keys import APIKeys, Key


class NotFound(HyperretError):
    """An unknown index (HTTP 404)."""


class Denied(HyperretError):
    """A missing key (401) or a key without the permission asked for (403)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Per-request limits: a request beyond them gets a 4xx, never a long stall."""

    max_k: int = 1000
    max_queries: int = 256
    max_body_bytes: int = 8 << 20
    timeout_seconds: float = 30.0
    #: searches run at once; each already uses every core (Numba, BLAS), so more only contend
    search_slots: int = 1


@dataclass
class Served:
    """One index as served: its handle, default policy and the last refresh check."""

    name: str
    index: Any  # an Index, or a ShardedIndex (the same search, classify, info, manifest and refresh)
    default_policy: str
    checked: float = field(default=0.0)


class Service:
    """The indexes, the model and the keys of one server."""

    def __init__(self, paths: list[str | Path], *, model: str | None = None, arch: Any = None, device: str = "cpu",
                 keys: APIKeys | None = None, default_policy: str = "off", limits: Limits = Limits(),
                 refresh_seconds: float = 1.0, ray_address: str | None = None):
        if default_policy not in POLICIES:
            raise InvalidInputError(f"unknown default policy {default_policy!r} (one of: {', '.join(POLICIES)})")
        if default_policy == "outward":
            raise InvalidInputError("the default policy cannot be outward: it retrieves unsafe content on purpose")
        self.indexes: dict[str, Served] = {}
        for p in paths:
            path = Path(p).resolve()
            name = path.stem if path.is_file() else path.name
            if name in self.indexes:
                raise InvalidInputError(f"two indexes are named {name!r}: serve folders with different names")
            ix: Any
            if path.is_file():  # a parts file: one index over its parts, on Ray
                from ..distributed.sharded import ShardedIndex

                ix = ShardedIndex.open(path, ray_address, device=device)
            else:
                ix = Index.open(p, device=device if device.startswith("cuda") else "cpu")
            self.indexes[name] = Served(name, ix, default_policy, time.monotonic())
        if not self.indexes:
            raise InvalidInputError("no index to serve")
        self.model, self.arch, self.device = model, arch, device
        self.keys, self.limits, self.refresh_seconds = keys, limits, refresh_seconds
        self._encoder: Any = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, limits.search_slots))

    def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """``fn(*args, **kw)`` in one of the search slots (waits for a free one: a queue, not contention)."""
        with self._slots:
            return fn(*args, **kw)

    # --------------------------------------------------------------- access
    def served(self, name: str | None) -> Served:
        """The index ``name`` (``None``: the only one), refreshed if a check is due."""
        if name is None:
            if len(self.indexes) != 1:
                raise InvalidInputError(f"name the index (one of: {', '.join(self.indexes)})")
            s = next(iter(self.indexes.values()))
        elif name in self.indexes:
            s = self.indexes[name]
        else:
            raise NotFound(f"no index named {name!r} (serving: {', '.join(self.indexes)})")
        now = time.monotonic()
        if now - s.checked >= self.refresh_seconds:
            s.checked = now
            s.index.refresh()
        return s

    def authorise(self, presented: str | None, *, unsafe: bool) -> Key | None:
        """The caller's key; raises :class:`Denied` where the request needs one it lacks."""
        if self.keys is None:
            if unsafe:
                raise Denied("unsafe content needs an API key with the 'unsafe' permission, and this server has "
                             "no keys configured (--api-key-file)", 403)
            return None
        key = self.keys.check(presented)
        if key is None:
            raise Denied("a valid API key is required (header X-API-Key)", 401)
        if unsafe and "unsafe" not in key.permissions:
            raise Denied(f"key {key.name!r} lacks the 'unsafe' permission (policy outward, allow_unsafe)", 403)
        return key

    # ---------------------------------------------------------------- model
    def encoder(self, ix: Any) -> Any:
        """The model (loaded once, on the first text or image query), checked against the index's."""
        with self._lock:
            if self._encoder is None:
                from ..embed.encoder import load_encoder
                from ..embed.runs import check_model

                recorded = ix.manifest.producer.get("model")
                spec = self.model or (recorded or {}).get("checkpoint")
                if spec is None:
                    raise InvalidInputError("text and image queries need a model: start the server with --model "
                                            "(this index records none)")
                arch = self.arch or (recorded or {}).get("arch")
                enc = load_encoder(spec, arch, self.device)
                if recorded:
                    check_model(recorded, enc, str(ix.path))
                self._encoder = enc
            return self._encoder

    def query_vectors(self, ix: Any, vectors: Any, texts: list[str], image: bytes | None) -> tuple[Any, list[str]]:
        """``(queries (m, D), modalities)`` from exactly one of vectors, texts or an image."""
        given = [x for x in (vectors is not None, bool(texts), image is not None) if x]
        if len(given) != 1:
            raise InvalidInputError("give exactly one of: vectors, text, image")
        if vectors is not None:
            q = np.asarray(vectors, dtype=np.float64)
            if q.ndim == 1:
                q = q[None, :]
            self._check_count(len(q))
            return q, ["text"] * len(q)
        enc = self.encoder(ix)
        if texts:
            self._check_count(len(texts))
            return enc.encode_text(texts), ["text"] * len(texts)
        from ..embed.images import ImageSkipped, decode

        try:
            img = decode(image or b"")
        except ImageSkipped as e:
            raise InvalidInputError(f"the uploaded image: {e}") from None
        return enc.encode_images([img.image]), ["image"]

    def _check_count(self, m: int) -> None:
        if m > self.limits.max_queries:
            raise InvalidInputError(f"{m} queries in one request; at most {self.limits.max_queries}")
