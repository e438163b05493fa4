"""The ``hyperret`` Typer app, its ``--version``, and the one-line error handling every command uses."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

app = typer.Typer(
    name="hyperret",
    help="Safety-aware hyperbolic vector retrieval for HySAC embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"hyperret {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print hyperret's version and exit."),
) -> None:
    """Safety-aware hyperbolic vector retrieval for HySAC embeddings."""


def fail(message: str) -> NoReturn:
    typer.echo(f"hyperret: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def handle_errors(fn: F) -> F:
    """Turn hyperret's errors (and OS errors) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..errors import HyperretError

        try:
            return fn(*args, **kwargs)
        except HyperretError as e:
            fail(str(e))
        except OSError as e:
            fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}")
        except KeyboardInterrupt:
            typer.echo("hyperret: interrupted; nothing was committed by the interrupted step", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except typer.Exit:
            raise
        except Exception as e:  # a bug, not bad input: say so in one line, trace on request
            if os.environ.get("HYPERRET_DEBUG"):
                raise
            typer.echo(f"hyperret: internal error: {type(e).__name__}: {e} (set HYPERRET_DEBUG=1 for a trace)",
                       err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
