"""Joining Ray quietly, and results of Ray tasks and actors with hyperret's own errors passed on as raised."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import HyperretError

_RAISED = re.compile(r"^(?:[\w.]+\.)?(\w+): (.+)$")  # "hyperret.errors.IndexNotFoundError: no index at ..."


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

    with unwrapped(where):
        return ray.get(refs)


@contextmanager
def unwrapped(where: str = "") -> Iterator[None]:
    """Raise the :class:`~hyperret.errors.HyperretError` inside a Ray error escaping the block (see
    :func:`unwrap`) in its place, as one line; any other error as it is."""
    try:
        yield
    except Exception as e:
        err = unwrap(e, where)
        if err is e:
            raise
        raise err from None


def die_once(marker: str | None) -> None:
    """Tests: the first worker call that finds no file at ``marker`` makes it and kills its own
    process, as a crashed machine would (Ray then retries the task or restarts the actor)."""
    if marker is not None and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)


def unwrap(e: BaseException, where: str = "") -> BaseException:
    """The :class:`~hyperret.errors.HyperretError` a Ray task or actor raised (as one line), else ``e`` itself.

    A task's error travels as the exception (``cause``); an actor that failed to start
    (e.g. no index at its path on that node) only as text (``error_msg``), whose last
    ``module.ErrorName: message`` line names it.
    """
    cause = getattr(e, "cause", None)
    if isinstance(cause, HyperretError):
        return type(cause)(f"{where}{cause}" if where else str(cause))
    text = getattr(e, "error_msg", None)
    if isinstance(text, str):
        for line in reversed(text.splitlines()):
            m = _RAISED.match(line.strip())
            cls = getattr(errors, m.group(1), None) if m else None
            if m and isinstance(cls, type) and issubclass(cls, HyperretError):
                return cls(f"{where}a Ray worker could not start: {m.group(2)}")
    return e
