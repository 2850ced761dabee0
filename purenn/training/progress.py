"""Progress reporting: a tqdm bar per epoch on a terminal, plain log lines otherwise, or quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def plural(count: int, noun: str) -> str:
    """``"1 class"``, ``"3 classes"``, ``"2 epochs"``, ``"1 entry"``, ``"4 entries"``."""
    if count == 1:
        return f"{count} {noun}"
    if noun.endswith("y"):
        return f"{count} {noun[:-1]}ies"
    return f"{count} {noun}{'es' if noun.endswith('s') else 's'}"


class Progress:
    """Where the training loop reports.

    Args:
        quiet: print only :meth:`result` lines (and errors, elsewhere).
        bars: show tqdm bars on stderr; default: when stderr is a terminal. Without bars, a
            plain line is printed every ``log_interval`` seconds within an epoch.
        stream: where messages go (default ``sys.stdout``).
        log_interval: seconds between plain progress lines within an epoch.
    """

    def __init__(
        self,
        quiet: bool = False,
        bars: bool | None = None,
        stream: TextIO | None = None,
        log_interval: float = 60.0,
    ) -> None:
        self.quiet = quiet
        self.bars = (not quiet) and (sys.stderr.isatty() if bars is None else bars)
        self.stream = stream
        self.log_interval = log_interval
        self._bar: tqdm | None = None
        self._last_line = 0.0

    def _print(self, message: str) -> None:
        stream = self.stream or sys.stdout
        if self._bar is not None:
            tqdm.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)

    def info(self, message: str) -> None:
        """A log line (run header, epoch summary, notices); not shown when quiet."""
        if not self.quiet:
            self._print(message)

    def result(self, message: str) -> None:
        """A line always shown (the outcome of the command)."""
        self._print(message)

    def start_epoch(self, epoch: int, epochs: int, batches: int, done: int) -> None:
        """Begin reporting epoch ``epoch`` (1-based) of ``batches`` batches, ``done`` done."""
        self._epoch = f"epoch {epoch}/{epochs}"
        self._batches = batches
        self._start = (time.monotonic(), done)
        self._last_line = self._start[0]
        if self.bars:
            self._bar = tqdm(
                total=batches, initial=done, desc=self._epoch, unit="batch", leave=False
            )

    def update(self, done: int, loss: float, accuracy: float, images_per_sec: float) -> None:
        """After a batch: ``done`` batches of the epoch finished, running loss and accuracy."""
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"loss {loss:.4f}, acc {100 * accuracy:.1f}%, {images_per_sec:.0f} img/s",
                refresh=False,
            )
            self._bar.update(done - self._bar.n)
        elif not self.quiet and time.monotonic() - self._last_line >= self.log_interval:
            self._last_line = time.monotonic()
            start, start_done = self._start
            eta = (self._batches - done) * (self._last_line - start) / max(done - start_done, 1)
            self.info(
                f"{self._epoch} batch {done}/{self._batches}: loss {loss:.4f}, "
                f"acc {100 * accuracy:.1f}%, {images_per_sec:.0f} img/s, ETA {eta:.0f} s"
            )

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
