"""How every command stops on bad input: one red ``error:`` line on stderr and exit status 2."""

from __future__ import annotations

import typer

__all__ = ["fail"]


def fail(error: Exception) -> None:
    """Print ``error`` as the command's one-line answer and exit with status 2."""
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
