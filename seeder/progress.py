"""Phases of a seed run: each is timed for the report and shown as a bar, a line or nothing."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Advance = Callable[[int], None]
"""Called with the number of rows just done."""


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Cancelled(Exception):
    """The run was cancelled (Ctrl-C, or the other dataset failed): raised at the next chunk."""


class Reporter:
    """Times phases and shows nothing: what seed() uses unless asked for progress.

    Every loop of the seeder reports each chunk it finishes, which also makes the report the
    place where a cancelled run stops: advance() raises Cancelled once cancel() was called.
    """

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @contextmanager
    def phase(self, name: str, total: int) -> Iterator[Advance]:
        started = time.perf_counter()
        done = 0
        handle = self._started(name, total)

        def advance(rows: int) -> None:
            nonlocal done
            if self._cancelled.is_set():
                raise Cancelled(name)
            done += rows
            self._advanced(handle, done, time.perf_counter() - started)

        yield advance
        phase = Phase(name, done, time.perf_counter() - started)
        self.phases.append(phase)
        self._finished(handle, phase)

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass

    # Display hooks.
    def _started(self, name: str, total: int) -> Any:
        return None

    def _advanced(self, handle: Any, done: int, seconds: float) -> None:
        pass

    def _finished(self, handle: Any, phase: Phase) -> None:
        pass


class PlainReporter(Reporter):
    """A line per finished phase: for logs, pipes and --no-progress."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self._stream = stream or sys.stdout

    def note(self, message: str) -> None:
        print(message, file=self._stream, flush=True)

    def _finished(self, handle: Any, phase: Phase) -> None:
        self.note(
            f"{phase.name}: {phase.rows:,} rows in {phase.seconds:.1f} s "
            f"({phase.rows_per_second:,.0f} rows/s)"
        )


class RichReporter(Reporter):
    """A live bar per phase, left on screen when the phase ends."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._progress = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>14}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._progress.start()

    def note(self, message: str) -> None:
        self._progress.console.print(message, highlight=False)

    def close(self) -> None:
        self._progress.stop()

    def _started(self, name: str, total: int) -> Any:
        return self._progress.add_task(name, total=total, rate="")

    def _advanced(self, handle: Any, done: int, seconds: float) -> None:
        rate = f"{done / seconds:,.0f} rows/s" if seconds > 0 else ""
        self._progress.update(handle, completed=done, rate=rate)

    def _finished(self, handle: Any, phase: Phase) -> None:
        # Totals are estimates (score rows, say): end the bar at what was really done.
        self._progress.update(
            handle,
            total=phase.rows,
            completed=phase.rows,
            rate=f"{phase.rows_per_second:,.0f} rows/s",
        )


def reporter_for(*, progress: bool, console: Console | None = None) -> Reporter:
    """Bars on a terminal, plain lines elsewhere; nothing at all when progress is off."""
    if not progress:
        return Reporter()
    console = console or Console()
    return RichReporter(console) if console.is_terminal else PlainReporter(console.file)
