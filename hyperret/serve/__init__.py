"""``hyperret serve``: the search service (FastAPI) and its web page; needs the ``serve`` extra."""

from __future__ import annotations

from .keys import APIKeys, add_key
from .service import Limits, Service

__all__ = ["APIKeys", "Limits", "Service", "add_key", "create_app", "app_from_env", "service_from_config"]


def create_app(service: Service):  # noqa: ANN201 - FastAPI is imported only here
    """The FastAPI application over ``service`` (:mod:`hyperret.serve.app`)."""
    from .app import create_app as make

    return make(service)


#: the environment variable that hands a worker process its configuration (``--workers N``)
CONFIG_ENV = "HYPERRET_SERVE_CONFIG"


def service_from_config(config: dict) -> Service:
    """The :class:`Service` a JSON-able configuration describes: ``paths``, ``api_key_file``, ``limits``
    (:class:`Limits` fields) and the rest of :class:`Service`'s keyword arguments."""
    cfg = dict(config)
    key_file = cfg.pop("api_key_file", None)
    keys = APIKeys.load(key_file) if key_file else None
    return Service(cfg.pop("paths"), keys=keys, limits=Limits(**cfg.pop("limits", {})), **cfg)


def app_from_env():  # noqa: ANN201
    """The application a uvicorn worker builds from :data:`CONFIG_ENV` (the server's configuration, JSON)."""
    import json
    import os

    return create_app(service_from_config(json.loads(os.environ[CONFIG_ENV])))
