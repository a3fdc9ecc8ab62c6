"""Progress and log lines on stderr, so stdout carries only results (tables, JSON) for scripts and CI."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Reporter:
    """verbosity: 0 = --quiet (errors only), 1 = default (steps and progress bars), 2 = --verbose (details)."""

    def __init__(self, verbosity: int = 1, stream=None):
        self.verbosity = verbosity
        self.stream = stream or sys.stderr
        self._t0 = time.perf_counter()

    def step(self, message: str) -> None:
        if self.verbosity >= 1:
            print(f"[{time.perf_counter() - self._t0:6.1f}s] {message}", file=self.stream, flush=True)

    def warning(self, message: str) -> None:
        """Shown even with --quiet: something the user should know about the result."""
        print(f"warning: {message}", file=self.stream, flush=True)

    def detail(self, message: str) -> None:
        if self.verbosity >= 2:
            print(f"          {message}", file=self.stream, flush=True)

    @contextmanager
    def progress(self, total: int, label: str):
        """A tqdm bar on a terminal, or nothing when quiet; yields update(description)."""
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            desc=label,
            unit="tensor",
            file=self.stream,
            leave=False,
            disable=self.verbosity < 1 or not self.stream.isatty(),
            dynamic_ncols=True,
        )

        def update(description: str = "") -> None:
            if description:
                bar.set_postfix_str(description[:40], refresh=False)
                self.detail(description)
            bar.update(1)

        try:
            yield update
        finally:
            bar.close()
