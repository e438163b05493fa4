"""``hyperret serve``: the search service (FastAPI) and its web page; needs the ``serve`` extra."""

from __future__ import annotations

from .keys import APIKeys, add_key
from .service import Limits, Service

__all__ = ["APIKeys", "Limits", "Service", "add_key", "create_app", "app_from_env"]


def create_app(service: Service):  # noqa: ANN201 - FastAPI is imported only here
    """The FastAPI application over ``service`` (:mod:`hyperret.serve.app`)."""
    from .app import create_app as make

    return make(service)


#: the environment variable that hands a worker process its configuration (``--workers N``)
CONFIG_ENV = "HYPERRET_SERVE_CONFIG"


def app_from_env():  # noqa: ANN201
    """The application a uvicorn worker builds from :data:`CONFIG_ENV` (a JSON object of Service arguments)."""
    import json
    import os

    cfg = json.loads(os.environ[CONFIG_ENV])
    keys = APIKeys.load(cfg.pop("api_key_file")) if cfg.get("api_key_file") else None
    cfg.pop("api_key_file", None)
    limits = Limits(**cfg.pop("limits", {}))
    return create_app(Service(cfg.pop("paths"), keys=keys, limits=limits, **cfg))
