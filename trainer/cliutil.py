"""What both command lines share: run a Typer app so every failure is one readable line."""

from __future__ import annotations

from collections.abc import Sequence

import click
import typer
from pydantic import ValidationError

try:  # typer ≥ 0.22 vendors click as typer._click with its own exception classes
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions  # type: ignore[assignment,misc]

_CLICK_ERRORS = (click.ClickException, _typer_click.ClickException)
_EXIT = (click.exceptions.Exit, typer.Exit)
_ABORT = (click.exceptions.Abort, typer.Abort)


def run_cli(
    app: typer.Typer,
    prog: str,
    argv: Sequence[str] | None,
    expected: tuple[type[BaseException], ...],
) -> int:
    """Run ``app``; usage errors exit 2, ``expected`` errors exit 1, each as one line."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name=prog, standalone_mode=False)
    except _EXIT as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _ABORT:
        typer.echo(f"{prog}: aborted", err=True)
        return 130
    except _CLICK_ERRORS as exc:
        typer.echo(f"{prog}: error: {exc.format_message()}", err=True)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        typer.echo(f"{prog}: invalid setting {where}: {first.get('msg')}", err=True)
        return 2
    except expected as exc:
        typer.echo(f"{prog}: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
