"""Progress of a long run: a reporter interface the tasks call, and a tqdm implementation.

The tasks never print; they tell a :class:`Progress` how many inputs there are and which ones are
done (with the reason for each failure). :class:`TqdmProgress` turns that into a bar with
images/s and ETA on stderr and one line per unreadable file.
"""

from __future__ import annotations

import sys
from typing import Protocol, Sequence, TextIO

from .inputs import printable_path

__all__ = ["Progress", "TqdmProgress"]


class Progress(Protocol):
    def start(self, total: int, done: int = 0) -> None:
        """``total`` inputs, of which ``done`` were finished by an earlier run."""

    def advance(self, paths: Sequence[str], errors: Sequence[str | None]) -> None:
        """These inputs are finished; ``errors[i]`` says why ``paths[i]`` could not be read."""

    def close(self) -> None:
        ...


class TqdmProgress:
    """A tqdm bar on ``stream`` (default stderr) and a ``pnasnet: cannot read PATH: REASON`` line
    per failure, printed even when the bar is hidden. The bar appears only on a terminal (a log
    file would fill with redraws) and once a run has lasted ``delay`` seconds, so quick runs stay
    quiet; ``show_bar=False`` hides it always."""

    def __init__(self, *, show_bar: bool = True, stream: TextIO | None = None, delay: float = 2.0,
                 description: str | None = None):
        self.show_bar = show_bar
        self.stream = stream
        self.delay = delay
        self.description = description
        self._bar = None

    def start(self, total: int, done: int = 0) -> None:
        from tqdm.auto import tqdm

        stream = self.stream or sys.stderr
        on_terminal = hasattr(stream, "isatty") and stream.isatty()
        self._bar = tqdm(total=total, initial=done, unit="img", file=stream,
                         disable=not (self.show_bar and on_terminal), delay=self.delay, desc=self.description,
                         dynamic_ncols=True, smoothing=0.1)

    def advance(self, paths: Sequence[str], errors: Sequence[str | None]) -> None:
        for path, error in zip(paths, errors):
            if error is not None:
                self.write(f"pnasnet: cannot read {printable_path(path)}: {error}", self.stream or sys.stderr)
        if self._bar is not None:
            self._bar.update(len(paths))

    def write(self, line: str, file: TextIO | None = None) -> None:
        """Print ``line`` (to stdout by default) without breaking the bar."""
        from tqdm.auto import tqdm

        tqdm.write(line, file=file or sys.stdout)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
