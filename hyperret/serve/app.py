"""The HTTP service of ``hyperret serve``: FastAPI routes over a :class:`~hyperret.serve.service.Service`.

``POST /search`` (JSON: vectors, text or a base64 image) and ``POST /search/upload``
(a multipart image upload), ``POST /classify``, ``GET /indexes``, ``GET
/indexes/{name}``, ``GET /healthz``, ``GET /metrics`` (Prometheus text), the web page
at ``/``; the OpenAPI schema at ``/docs``. Every error is JSON ``{"error": ...}``
with a 4xx status: bad input 400, no key 401, a key without the permission 403, an
unknown index 404, a body over the limit 413, malformed JSON or fields 422, a search
over the time limit 503.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from ..errors import HyperretError, InvalidInputError
from .service import Denied, NotFound, Service


class SearchRequest(BaseModel):
    """A search: exactly one of ``vectors``, ``text``, ``image`` (base64)."""

    model_config = ConfigDict(extra="forbid")
    index: str | None = Field(None, description="Index name (default: the only one served).")
    vectors: list[list[float]] | list[float] | None = Field(None, description="Query space components (m, dim).")
    text: list[str] | str | None = Field(None, description="Text queries (embedded with the server's model).")
    image: str | None = Field(None, description="A base64-encoded image query.")
    k: int = Field(10, ge=1, description="Hits per query.")
    policy: list[str] | str | None = Field(None, description="off, redirect, filter, block or outward; one or "
                                           "one per query (default: the index's default policy).")
    modality: list[str] | str | None = Field(None, description="Query modality for vectors: text or image.")
    where: str | None = Field(None, description="Metadata predicate, e.g. \"width > 500\".")
    dedup: bool | float = Field(False, description="Collapse near-duplicate hits (True, or a radius).")
    allow_unsafe: bool = Field(False, description="Needed with outward; needs a key with 'unsafe'.")
    columns: list[str] | None = Field(None, description="Metadata columns per hit (default: all).")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: str | None = None
    vectors: list[list[float]] | list[float] | None = None
    text: list[str] | str | None = None
    image: str | None = None
    modality: list[str] | str | None = None


def create_app(service: Service) -> FastAPI:
    """The FastAPI application serving ``service``."""
    app = FastAPI(title="hyperret", description="Safety-aware hyperbolic retrieval (HySAC embeddings).")
    registry = CollectorRegistry()
    requests = Counter("hyperret_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("hyperret_request_seconds", "Request latency", ["endpoint"], registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    errors = Counter("hyperret_errors", "Requests answered with an error status", ["endpoint", "status"],
                     registry=registry)
    version = Gauge("hyperret_index_version", "Committed version served", ["index"], registry=registry)
    limits = service.limits

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        """Body size limit, then the metrics of every request."""
        t = time.perf_counter()
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limits.max_body_bytes):
            response: Response = _error(413, f"request body over {limits.max_body_bytes} bytes")
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        requests.labels(endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - t)
        if response.status_code >= 400:
            errors.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(HyperretError)
    async def hyperret_error(request: Request, exc: HyperretError) -> JSONResponse:
        status = exc.status if isinstance(exc, Denied) else 404 if isinstance(exc, NotFound) else 400
        return _error(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    async def timed(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(run_in_threadpool(fn, *args), limits.timeout_seconds)
        except asyncio.TimeoutError:
            raise _Timeout() from None

    @app.exception_handler(_Timeout)
    async def timeout_error(request: Request, exc: _Timeout) -> JSONResponse:
        return _error(503, f"the search took longer than {limits.timeout_seconds:g} s")

    @app.post("/search")
    async def search(req: SearchRequest, x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """The ``k`` nearest rows of each query under a safety policy (see ``Index.search``)."""
        image = _b64(req.image) if req.image is not None else None
        return await timed(_search, service, req, image, x_api_key, version)

    @app.post("/search/upload")
    async def search_upload(file: UploadFile = File(...), index: str | None = Form(None), k: int = Form(10),
                            policy: str | None = Form(None), where: str | None = Form(None),
                            x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """An uploaded image as the query (multipart form: ``file``, ``index``, ``k``, ``policy``, ``where``)."""
        data = await file.read(limits.max_body_bytes + 1)
        if len(data) > limits.max_body_bytes:
            raise InvalidInputError(f"the upload is over {limits.max_body_bytes} bytes")
        req = SearchRequest(index=index, k=k, policy=policy, where=where)
        return await timed(_search, service, req, data, x_api_key, version)

    @app.post("/classify")
    async def classify(req: ClassifyRequest, x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """Safe/unsafe verdicts of vectors, texts or an image by the index's bounds."""
        service.authorise(x_api_key, unsafe=False)
        image = _b64(req.image) if req.image is not None else None

        def run() -> dict[str, Any]:
            s = service.served(req.index)
            q, mods = service.query_vectors(s.index, req.vectors, _texts(req.text), image)
            c = service.run(s.index.classify, q, modality=req.modality or ("image" if req.vectors is not None
                                                                             else mods))
            return {"index": s.name, "unsafe": c.unsafe.tolist(), "radius": c.radius.tolist(),
                    "score": c.score.tolist(), "class": c.cls.tolist()}

        return await timed(run)

    @app.get("/indexes")
    async def indexes(x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """The indexes served: name, rows, version, dimension, geometry, default policy."""
        service.authorise(x_api_key, unsafe=False)
        out = []
        for name in service.indexes:
            s = service.served(name)
            m = s.index.manifest
            out.append({"name": name, "rows": m.rows, "version": m.version, "dim": m.dim,
                        "geometry": m.geometry, "default_policy": s.default_policy,
                        "bounds": s.index.bounds is not None, "columns": list(m.metadata_columns)})
        return {"indexes": out}

    @app.get("/indexes/{name}")
    async def index_info(name: str, x_api_key: str | None = Header(None)) -> dict[str, Any]:
        """``Index.info()`` of one index."""
        service.authorise(x_api_key, unsafe=False)
        s = service.served(name)
        return {**s.index.info(), "default_policy": s.default_policy}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "indexes": len(service.indexes)}

    @app.get("/metrics")
    async def metrics() -> Response:
        for name, s in service.indexes.items():
            version.labels(name).set(s.index.manifest.version)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    static = resources.files("hyperret.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    return app


class _Timeout(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status_code=status)


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data.split(",", 1)[-1], validate=True)  # a data URL's prefix is dropped
    except (binascii.Error, ValueError):
        raise InvalidInputError("image: not valid base64") from None


def _texts(text: list[str] | str | None) -> list[str]:
    return [text] if isinstance(text, str) else list(text or [])


def _search(service: Service, req: SearchRequest, image: bytes | None, key: str | None, version: Any) -> dict:
    """Run one search request (in a worker thread)."""
    service.authorise(key, unsafe=False)  # before anything about the indexes is said
    s = service.served(req.index)
    policy = req.policy if req.policy is not None else s.default_policy
    policies = [policy] if isinstance(policy, str) else list(policy)
    if "outward" in policies or req.allow_unsafe:
        service.authorise(key, unsafe=True)
    if req.k > service.limits.max_k:
        raise InvalidInputError(f"k = {req.k} is over the server's limit of {service.limits.max_k}")
    q, mods = service.query_vectors(s.index, req.vectors, _texts(req.text), image)
    res = service.run(s.index.search, q, req.k, policy=policy, modality=req.modality or mods, where=req.where,
                      dedup=req.dedup, allow_unsafe=req.allow_unsafe or "outward" in policies)
    version.labels(s.name).set(res.snapshot.manifest.version)
    hits = res.to_list(req.columns)
    return {"index": s.name, "version": res.snapshot.manifest.version, "exact": res.exact,
            "results": [{"hits": h, "plan": p.to_dict(), "explain": p.describe()} for h, p in zip(hits, res.plans)]}
