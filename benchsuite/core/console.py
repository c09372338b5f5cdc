"""The shared rich console, progress bars, and plain progress lines for logs.

On a terminal progress is a rich bar. When stderr is not a terminal (SLURM, nohup, a pipe) the
same progress is printed as plain lines (stage, count, percent, rate, ETA) at each 10 % step,
at most one line every ``PLAIN_INTERVAL_S`` seconds (the last line always). Whatever the
terminal, the lines are appended to the run's log file once :func:`set_log_file` named one; the
path travels to worker processes through ``BENCH_LOG_FILE``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)

LOG_ENV = "BENCH_LOG_FILE"
PLAIN_INTERVAL_S = 30.0
PLAIN_STEP_PERCENT = 10


def set_log_file(path: Path | None) -> None:
    """Append progress lines and run messages to ``path`` (this process and the workers it starts)."""
    if path is None:
        os.environ.pop(LOG_ENV, None)
    else:
        os.environ[LOG_ENV] = str(path)


def _append_log(line: str) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {line}\n")
    except OSError:  # a log that cannot be written must not stop a run
        pass


def note(message: str) -> None:
    """A run message: to the console (as ``console.log``) and to the log file."""
    console.log(message)
    _append_log(message)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _rate(per_second: float) -> str:
    """Steps per second, or seconds per step when a step takes longer than a second."""
    if per_second >= 1 or per_second <= 0:
        return f"{per_second:.3g} it/s"
    return f"{_duration(1 / per_second)}/it" if per_second < 1 / 60 else f"{1 / per_second:.3g} s/it"


class PlainProgress:
    """Decides when a plain progress line is due and formats it; ``clock`` is injectable for tests."""

    def __init__(self, description: str, total: int, start: int = 0, *, interval_s: float = PLAIN_INTERVAL_S,
                 step_percent: int = PLAIN_STEP_PERCENT, clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.total, self.start = description, max(total, 0), start
        self.done = start
        self.interval_s, self.step_percent, self.clock = interval_s, step_percent, clock
        self.began = clock()
        self.last_line_at: float | None = None
        self.last_bucket = self._bucket(start)

    def _bucket(self, done: int) -> int:
        return 100 * done // self.total // self.step_percent if self.total else 0

    def line(self, info: str = "") -> str:
        elapsed = self.clock() - self.began
        percent = 100.0 * self.done / self.total if self.total else 100.0
        ran = self.done - self.start
        rate = ran / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        parts = [f"{self.description}: {self.done}/{self.total} ({percent:.0f}%)",
                 _rate(rate) if ran else "", f"elapsed {_duration(elapsed)}",
                 f"ETA {_duration(eta)}" if eta is not None and self.done < self.total else "", info]
        return "  ".join(p for p in parts if p)

    def advance(self, n: int = 1, info: str = "") -> str | None:
        """Count ``n`` more; return the line to print now, or None."""
        self.done += n
        now = self.clock()
        bucket = self._bucket(self.done)
        finished = self.done >= self.total
        crossed = bucket > self.last_bucket
        rested = self.last_line_at is None or now - self.last_line_at >= self.interval_s
        if finished or (crossed and rested):
            self.last_bucket, self.last_line_at = bucket, now
            return self.line(info)
        return None


@contextmanager
def progress_bar(description: str, total: int, start: int = 0) -> Iterator[Callable[..., None]]:
    """A rich bar on a terminal, plain lines otherwise (and in the log file); yields ``advance(n=1, info="")``."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    terminal = console.is_terminal
    plain = PlainProgress(description, total, start)
    start_line = f"{description}: started at {start}/{total}"
    if not terminal:
        console.print(start_line, markup=False, highlight=False, soft_wrap=True)
    _append_log(start_line)
    with Progress(*columns, console=console, transient=True, disable=not terminal) as bar:
        task = bar.add_task(description, total=total, completed=start, info="")

        def advance(n: int = 1, info: str = "") -> None:
            bar.update(task, advance=n, info=info)
            line = plain.advance(n, info)
            if line is not None:
                if not terminal:
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
                _append_log(line)

        yield advance
