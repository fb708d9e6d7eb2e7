"""Command-line options as data, declared once.

An :class:`Option` holds what ``argparse.ArgumentParser.add_argument`` takes: its flags
and its settings (help, type, choices, action, ...). Options live in one of two places:

- in the metadata of the dataclass field they fill (:func:`field_option`), so that
  :class:`~qsnn.net.quantization.Precision`, :class:`~qsnn.train.config.TrainConfig`
  and :class:`~qsnn.pipeline.RunSpec` declare each field and its option together, and
  :func:`field_options` reads them back;
- in a table of options that fill no dataclass (the ``qsnn`` command's ``--device``,
  ``--quiet``, ... in :mod:`qsnn.cli`).

:func:`add_options` adds a sequence of them to a parser. A field's option holds no
default: an option left out parses to None (False for a flag), and :func:`given_values`
returns only the fields given, so the dataclass's own defaults (and a recipe's) fill in
the rest.

Pure Python: argparse and dataclasses only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

OPTION = "option"  # the metadata key of a field's Option


@dataclass(frozen=True)
class Option:
    """One command-line option: ``flags`` (none: ``--`` and the field's name with dashes)
    and the keyword arguments of ``add_argument``. In ``help``, ``{default}`` stands for
    the field's default."""

    flags: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, *flags: str, **settings: Any) -> Option:
        return cls(tuple(flags), MappingProxyType(dict(settings)))

    def but(self, **settings: Any) -> Option:
        """The same option with some settings changed (e.g. another help text)."""
        return Option(self.flags, MappingProxyType({**self.settings, **settings}))

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.settings)


def field_option(*flags: str, default: Any = dataclasses.MISSING, **settings: Any) -> Any:
    """A dataclass field with ``default`` (none: a required field) whose command-line
    option is ``Option.of(*flags, **settings)``."""
    metadata = {OPTION: Option.of(*flags, **settings)}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_ITS_OWN = object()  # field_like's default: the declared field's


def field_like(cls: type, name: str, *, default: Any = _ITS_OWN, **settings: Any) -> Any:
    """A field declared as field ``name`` of the dataclass ``cls`` is, with its option
    (``settings`` changing some of it) and its default (unless ``default`` is given;
    ``dataclasses.MISSING``: a required field), for another dataclass with the same field."""
    declared = next(f for f in dataclasses.fields(cls) if f.name == name)
    option: Option = declared.metadata[OPTION]
    if default is _ITS_OWN:
        default = declared.default
    metadata = {OPTION: option.but(**settings)}
    return field(default=default, metadata=metadata) if default is not dataclasses.MISSING else field(metadata=metadata)


def field_options(cls: type, names: Iterable[str], *, required: Iterable[str] = ()) -> list[Option]:
    """The options of the fields ``names`` of the dataclass ``cls``, in that order, as
    add_argument takes them: flags from the field name where the option names none,
    ``dest`` the field, ``{default}`` in the help filled in, and ``required`` set for the
    fields named so. A field that declares no option is a programming error (KeyError)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    must = set(required)
    options = []
    for name in names:
        declared = fields[name]
        option: Option = declared.metadata[OPTION]
        settings = dict(option.settings)
        default = declared.default_factory() if declared.default_factory is not dataclasses.MISSING else declared.default
        if "help" in settings:
            settings["help"] = settings["help"].replace("{default}", str(default))
        if settings.get("action") != "store_true":
            settings.setdefault("default", None)
        if name in must:
            settings["required"] = True
        flags = option.flags or ("--" + name.replace("_", "-"),)
        options.append(Option(flags, MappingProxyType({**settings, "dest": name})))
    return options


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    for option in options:
        option.add_to(parser)


def given_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The fields ``names`` given on the command line: those parsed to neither None nor
    False (an option left out, or a flag not set)."""
    values = {name: getattr(args, name) for name in names}
    return {name: value for name, value in values.items() if value is not None and value is not False}


# --- argument types: text -> value, or a one-line error argparse reports -------------------

AUTO_MAX_STEPS = 100_000  # as qsnn.sim.stepwise.AUTO_MAX_STEPS, without importing torch here


def optional_int(text: str) -> int | None:
    """An integer, or None for "none"."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def time_steps(text: str) -> int | None:
    """A number of time steps, or None for "auto" (until nothing is in flight)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps must be a positive integer or 'auto', got {text!r}") from None
    if not 1 <= value <= AUTO_MAX_STEPS:
        raise argparse.ArgumentTypeError(
            f"--steps must be a positive integer up to {AUTO_MAX_STEPS:,} or 'auto', got {text!r}"
        )
    return value


def _number(text: str, accept, expected: str) -> float:
    """A float that ``accept`` takes (NaN and non-numbers never pass), else a one-line error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def ratio(text: str) -> float:
    return _number(text, lambda value: 0 <= value <= 1, "a ratio between 0 and 1")


def energy(text: str) -> float:
    return _number(text, lambda value: 0 < value < math.inf, "a positive energy in pJ")
