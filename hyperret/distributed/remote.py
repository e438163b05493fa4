"""Joining Ray quietly, and results of Ray tasks and actors with hyperret's own errors passed on as raised."""

from __future__ import annotations

from typing import Any

from ..errors import HyperretError


def init(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (None: start a local one) unless this process has; Ray's own
    start-up chatter (INFO lines, Ray Data's notices) stays off the terminal, its errors do not."""
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def get(refs: Any, where: str = "") -> Any:
    """``ray.get(refs)``; a task's :class:`~hyperret.errors.HyperretError` is raised again as one line.

    Ray wraps a remote exception with the remote traceback; a user error (bad data, a
    bad predicate) should read as it does locally. ``where`` prefixes the message.
    """
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        raise unwrap(e, where) from None


def unwrap(e: BaseException, where: str = "") -> BaseException:
    """The :class:`~hyperret.errors.HyperretError` a Ray task raised (as one line), else ``e`` itself."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, HyperretError):
        return type(cause)(f"{where}{cause}" if where else str(cause))
    return e
