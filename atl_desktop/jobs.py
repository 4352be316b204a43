"""Long work as generators of Progress values.

A job is any generator that yields `Progress`. Each yield is a point at which
the caller may stop iterating (cancel); the job must leave everything it has
committed consistent at every yield. The CLI drives jobs with tqdm, the GUI with
a QThread runner, tests by iterating.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar


@dataclass(frozen=True)
class Progress:
    done: int
    total: int | None
    message: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


class Cancelled(Exception):
    """Raised by `run_job` when a cancel check asks the job to stop."""


Job = Generator[Progress, None, Any]
T = TypeVar("T")


def run_job(
    job: Generator[Progress, None, T],
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> T:
    """Drive `job` to the end and return its result (the generator's return value).

    `should_cancel` is asked after every yield; when it says yes the generator
    is closed (its `finally` blocks run) and `Cancelled` is raised.
    """
    try:
        while True:
            progress = next(job)
            if on_progress is not None:
                on_progress(progress)
            if should_cancel is not None and should_cancel():
                job.close()
                raise Cancelled()
    except StopIteration as stop:
        return stop.value


def run_with_tqdm(job: Generator[Progress, None, T], desc: str = "", quiet: bool = False) -> T:
    """Drive a job on the command line with a tqdm bar; Ctrl+C cancels cleanly.

    The bar appears with the first Progress, so a job refused before any work (a one-line
    error) leaves no empty bar in front of the message; on a pipe or a log file (not a
    terminal) there is no bar at all, only the results.
    """
    bars: list = []

    def show(p: Progress) -> None:
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(desc=desc, disable=True if quiet else None, unit="it", dynamic_ncols=True, leave=False))
        bar = bars[0]
        if p.total is not None and bar.total != p.total:
            bar.total = p.total
        bar.n = p.done
        postfix = {k: f"{v:.4g}" for k, v in p.metrics.items()}
        if p.message:
            bar.set_description(p.message if not desc else f"{desc}: {p.message}", refresh=False)
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    try:
        try:
            return run_job(job, on_progress=show)
        except KeyboardInterrupt:
            job.close()
            raise Cancelled() from None
    finally:
        for bar in bars:
            bar.close()


def collect(job: Iterator[Progress]) -> list[Progress]:
    """Run a job to the end, keeping every Progress (handy in tests)."""
    return list(job)


def relabel(job: Generator[Progress, None, T], message: str) -> Generator[Progress, None, T]:
    """Run `job` inside another job, showing `message`; returns the job's result.

    Use as `result = yield from relabel(inner, "scoring")`. Closing the outer
    job closes the inner one at once, so its cleanup runs before the caller's.
    """
    try:
        while True:
            p = next(job)
            yield Progress(p.done, p.total, message or p.message, p.metrics)
    except StopIteration as stop:
        return stop.value
    finally:
        job.close()
