"""Progress display for a run: rich bars for rounds and local steps, or nothing.

The loop talks to a :class:`RunProgress`; ``--quiet`` and the tests use the
silent base class, the CLI uses :class:`RichProgress`.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn,
                           TimeElapsedColumn)


class RunProgress:
    """Silent progress sink; subclasses draw something."""

    def __enter__(self) -> RunProgress:
        """Starts the display."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stops the display."""

    def message(self, text: str) -> None:
        """Shows a one-line status message."""

    def start_rounds(self, total: int) -> None:
        """Announces the number of rounds."""

    def end_round(self, description: str) -> None:
        """Marks one round done, with a short summary."""

    def start_steps(self, total: int, description: str) -> None:
        """Starts a bar of ``total`` local (or warm-up) steps."""

    def step(self, loss: float) -> None:
        """Marks one step done with its loss."""


class RichProgress(RunProgress):
    """Two rich bars: rounds, and the local steps of the current client."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self._console)
        self._rounds: TaskID | None = None
        self._steps: TaskID | None = None

    def __enter__(self) -> RichProgress:
        """Starts the live display."""
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stops the live display."""
        self._progress.stop()

    def message(self, text: str) -> None:
        """Prints a status line above the bars."""
        self._progress.console.log(text)

    def start_rounds(self, total: int) -> None:
        """Adds the rounds bar."""
        self._rounds = self._progress.add_task("rounds", total=total, info="")

    def end_round(self, description: str) -> None:
        """Advances the rounds bar and logs the round summary."""
        if self._rounds is not None:
            self._progress.update(self._rounds, advance=1, info=description)
        self._progress.console.log(description)

    def start_steps(self, total: int, description: str) -> None:
        """Resets the steps bar for a new client (or the warm-up)."""
        if self._steps is None:
            self._steps = self._progress.add_task(description, total=total, info="")
        else:
            self._progress.reset(self._steps, total=total, description=description, info="")

    def step(self, loss: float) -> None:
        """Advances the steps bar and shows the loss."""
        if self._steps is not None:
            self._progress.update(self._steps, advance=1, info=f"loss {loss:.3f}")
