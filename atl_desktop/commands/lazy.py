"""Choices that are read only when an argument is checked, so `atl --help` and the commands
that need no model start without importing torch (the registries live beside the models).

argparse iterates `choices` while adding an argument unless a metavar is given, and when it
formats help that names them; give every lazy argument a metavar and keep `%(choices)s` out of
its help (Python 3.13 expands help strings while adding the argument).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator


class LazyChoices:
    """The keys of `module.attribute` (a registry dict, a tuple, or a function returning
    a list), imported on first use."""

    def __init__(self, module: str, attribute: str) -> None:
        self._where = (module, attribute)
        self._names: tuple[str, ...] | None = None

    def _load(self) -> tuple[str, ...]:
        if self._names is None:
            value = getattr(importlib.import_module(self._where[0]), self._where[1])
            self._names = tuple(value() if callable(value) else value)
        return self._names

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


STRATEGY_NAMES = LazyChoices("atl_desktop.active.strategies", "STRATEGIES")
