"""Progress bars for every loop a person waits for (rich, on stderr)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator


def progress_enabled() -> bool:
    """On when stderr is a terminal; VGEN_PROGRESS=1/0 forces it."""
    forced = os.environ.get("VGEN_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return sys.stderr.isatty()


@contextmanager
def progress_bar(total: int, description: str, enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; a no-op when progress is off."""
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
