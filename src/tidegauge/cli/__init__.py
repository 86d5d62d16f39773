"""The ``tidegauge`` command line: thin, it parses, builds config objects and calls the library.

Every flag can also be set by an environment variable (shown in ``--help``). Errors are printed as
one line (``error: ...``) with exit code 2, never as a traceback (set ``TIDEGAUGE_DEBUG=1`` for one).
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

from tidegauge.errors import TidegaugeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="tidegauge",
    help="Real-time analytics for sensor and event streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _register() -> None:
    # Each command lives in its own module; importing it registers it on `app`.
    from tidegauge.cli import agent as _agent  # noqa: F401
    from tidegauge.cli import alerts, bench, checkpoint, demo, eval, run, serve, simulate  # noqa: F401


def main() -> None:
    """Entry point of the ``tidegauge`` script."""
    logging.basicConfig(
        level=os.environ.get("TIDEGAUGE_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _register()
    try:
        app(standalone_mode=False)
    except (TidegaugeError, ValueError, TypeError, FileNotFoundError, OSError) as exc:
        if os.environ.get("TIDEGAUGE_DEBUG"):
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False)
        sys.exit(exc.exit_code)
