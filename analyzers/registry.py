"""Discovery of analyzers, phantom generators and trainers through entry points.

Built-in analyzers and any third-party package installed into the same
environment register under the entry-point groups below; the node looks them up
by name and never imports an analyzer module directly.

* ``pacsnode.analyzers``: name -> class implementing :class:`analyzers.contract.Analyzer`
* ``pacsnode.phantoms``: name -> callable ``(out: Path, seed: int, cases: int, **options) -> Path``
* ``pacsnode.trainers``: name -> callable ``(argv: list[str]) -> int`` (the ``pacsnode train NAME``
  command line)
* ``pacsnode.evaluators``: name -> callable ``(argv: list[str]) -> int`` (``pacsnode evaluate NAME``)
* ``pacsnode.commands``: name -> callable ``(argv: list[str]) -> int`` (further ``pacsnode`` commands
  that live with the analyzers, e.g. ``phantom``)
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from analyzers.contract import Analyzer

__all__ = [
    "ANALYZER_GROUP",
    "COMMAND_GROUP",
    "EVALUATOR_GROUP",
    "PHANTOM_GROUP",
    "TRAINER_GROUP",
    "UnknownAnalyzer",
    "analyzer_names",
    "evaluator_names",
    "load_analyzer",
    "load_command",
    "load_evaluator",
    "load_phantom",
    "load_trainer",
    "phantom_names",
    "trainer_names",
]

ANALYZER_GROUP = "pacsnode.analyzers"
PHANTOM_GROUP = "pacsnode.phantoms"
TRAINER_GROUP = "pacsnode.trainers"
EVALUATOR_GROUP = "pacsnode.evaluators"
COMMAND_GROUP = "pacsnode.commands"


class UnknownAnalyzer(LookupError):
    """No entry point of that name in the group."""


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def _load(group: str, name: str) -> Any:
    found = _entry_points(group)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise UnknownAnalyzer(
            f"no {group!r} entry point named {name!r} (installed: {known}); "
            "install the package that provides it into the node's environment"
        )
    return found[name].load()


def analyzer_names() -> list[str]:
    """Names of every installed analyzer."""
    return sorted(_entry_points(ANALYZER_GROUP))


def load_analyzer(name: str) -> Analyzer:
    """Instantiate the analyzer registered as ``name``."""
    cls = _load(ANALYZER_GROUP, name)
    analyzer = cls()
    if not isinstance(analyzer, Analyzer):
        raise TypeError(f"entry point {name!r} does not implement the Analyzer protocol")
    return analyzer


def phantom_names() -> list[str]:
    """Names of every installed phantom generator."""
    return sorted(_entry_points(PHANTOM_GROUP))


def load_phantom(name: str) -> Callable[..., Any]:
    """The phantom generator registered as ``name``."""
    generator: Callable[..., Any] = _load(PHANTOM_GROUP, name)
    return generator


def trainer_names() -> list[str]:
    """Names of every installed trainer."""
    return sorted(_entry_points(TRAINER_GROUP))


def load_trainer(name: str) -> Callable[[list[str]], int]:
    """The ``pacsnode train NAME`` entry point registered as ``name``."""
    trainer: Callable[[list[str]], int] = _load(TRAINER_GROUP, name)
    return trainer


def evaluator_names() -> list[str]:
    """Names of every installed evaluator."""
    return sorted(_entry_points(EVALUATOR_GROUP))


def load_evaluator(name: str) -> Callable[[list[str]], int]:
    """The ``pacsnode evaluate NAME`` entry point registered as ``name``."""
    evaluator: Callable[[list[str]], int] = _load(EVALUATOR_GROUP, name)
    return evaluator


def load_command(name: str) -> Callable[[list[str]], int]:
    """A ``pacsnode NAME`` command provided by an analyzer package."""
    command: Callable[[list[str]], int] = _load(COMMAND_GROUP, name)
    return command
