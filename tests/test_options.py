"""Options declared once, with the dataclass field they fill (qsnn.options)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from qsnn.options import (
    AUTO_MAX_STEPS,
    Option,
    add_options,
    field_like,
    field_option,
    field_options,
    given_values,
    optional_int,
    positive_int,
    ratio,
    time_steps,
)


@dataclass(frozen=True)
class _Toy:
    name: str = field_option(help="what it is called")
    size: int = field_option(default=3, type=int, help="how big (default {default})")
    loud: bool = field_option(default=False, action="store_true", help="make noise")
    limit: int | None = field_option("--limit", "-n", default=None, type=positive_int, help="at most N")
    ratios: list[float] = field_option(default=[0.0], help="ratios")
    hidden: int = 0  # no option


@dataclass(frozen=True)
class _Other:
    size: int = field_like(_Toy, "size", default=5, help="other size (default {default})")
    loud: bool = field_like(_Toy, "loud")


def _parser(options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser, options)
    return parser


def test_field_options_are_made_from_the_fields():
    options = field_options(_Toy, ("name", "size", "loud", "limit", "ratios"), required=("name",))
    assert [option.flags for option in options] == [("--name",), ("--size",), ("--loud",), ("--limit", "-n"), ("--ratios",)]
    assert [option.settings["dest"] for option in options] == ["name", "size", "loud", "limit", "ratios"]
    assert options[0].settings["required"] is True and "required" not in options[1].settings
    assert options[1].settings["help"] == "how big (default 3)"
    assert options[1].settings["default"] is None  # (left out: the dataclass's default applies)
    assert "default" not in options[2].settings  # (a flag: False)
    assert _Toy(name="x").ratios == [0.0] and _Toy(name="x").ratios is not _Toy(name="y").ratios
    with pytest.raises(KeyError):
        field_options(_Toy, ("hidden",))


def test_given_values_keep_only_what_was_given():
    parser = _parser(field_options(_Toy, ("name", "size", "loud", "limit")))
    args = parser.parse_args(["--name", "a", "-n", "4"])
    assert given_values(args, ("name", "size", "loud", "limit")) == {"name": "a", "limit": 4}
    assert _Toy(**given_values(args, ("name", "size", "loud", "limit"))) == _Toy(name="a", size=3, limit=4)
    args = parser.parse_args(["--name", "b", "--size", "0", "--loud"])
    assert given_values(args, ("name", "size", "loud", "limit")) == {"name": "b", "size": 0, "loud": True}


def test_field_like_shares_the_option_and_may_change_its_default_and_help():
    (size,) = field_options(_Other, ("size",))
    assert size.flags == ("--size",) and size.settings["type"] is int
    assert size.settings["help"] == "other size (default 5)"
    assert _Other().size == 5 and _Other().loud is False
    assert field_options(_Other, ("loud",))[0].settings["help"] == "make noise"


def test_option_but_changes_settings_only_there():
    out = Option.of("--out", help="folder")
    required = out.but(required=True)
    assert (required.flags, dict(required.settings)) == (("--out",), {"help": "folder", "required": True})
    assert dict(out.settings) == {"help": "folder"}


@pytest.mark.parametrize(("convert", "text", "expected"), [
    (optional_int, "none", None), (optional_int, " None", None), (optional_int, "7", 7),
    (positive_int, "1", 1), (time_steps, "auto", None), (time_steps, "12", 12),
    (time_steps, str(AUTO_MAX_STEPS), AUTO_MAX_STEPS), (ratio, "0", 0.0), (ratio, "1", 1.0),
])
def test_argument_types_read_good_text(convert, text, expected):
    assert convert(text) == expected


@pytest.mark.parametrize(("convert", "text", "message"), [
    (optional_int, "x", "expected an integer or 'none', got 'x'"),
    (positive_int, "0", "expected a positive integer, got '0'"),
    (positive_int, "1.5", "expected a positive integer, got '1.5'"),
    (time_steps, "0", f"--steps must be a positive integer up to {AUTO_MAX_STEPS:,} or 'auto', got '0'"),
    (time_steps, "many", "--steps must be a positive integer or 'auto', got 'many'"),
    (ratio, "nan", "expected a ratio between 0 and 1, got 'nan'"),
    (ratio, "1.01", "expected a ratio between 0 and 1, got '1.01'"),
])
def test_argument_types_name_bad_text(convert, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        convert(text)
    assert str(caught.value) == message


def test_every_qsnn_option_is_declared_once_per_command():
    """The CLI's commands are made from the tables: no flag twice in a command, and the
    options run and train share come from the same field declarations."""
    from qsnn.cli import COMMANDS, build_parser

    for command in COMMANDS:
        flags = [flag for option in command.options for flag in option.flags if flag.startswith("-")]
        assert len(flags) == len(set(flags)), command.name
    parser = build_parser()
    helps = {}
    for name in ("train", "run", "sweep"):
        sub = parser._subparsers._group_actions[0].choices[name]
        helps[name] = {action.dest: action.help for action in sub._actions}
    for dest in ("k", "B", "ternary", "full_precision", "encoding_k", "encoding_B", "recipe", "batch_size", "seed"):
        assert helps["train"][dest] == helps["run"][dest] == helps["sweep"][dest], dest
    assert helps["run"]["test_limit"] == "only the first N test images"
