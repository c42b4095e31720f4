"""One config system: dataclasses filled from a YAML file, then from the command line.

`macaroon CMD --config configs/CMD.yaml --field value` gives every option one name in
YAML and on the command line, as TRL's `TrlParser` does for its trainers.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml


def parse_config(
    dataclass_types: Sequence[type], argv: Sequence[str], prog: str, defaults: dict | None = None
) -> tuple:
    """Parse `argv` (with an optional `--config FILE.yaml`) into one instance per type.

    `defaults` replace the dataclasses' own defaults; the YAML file and the command line
    still win over them.
    """
    from trl import TrlParser

    argv = list(argv)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        path = Path(argv[index + 1])
        if path.is_dir():
            raise ConfigError(f"--config {path}: is a folder; give a YAML file (configs/*.yaml)")
        if not path.is_file():
            raise ConfigError(f"--config {path}: config file not found; check the path")
        _check_keys(path, dataclass_types, prog)
    parser = TrlParser(dataclass_types=list(dataclass_types), prog=prog)
    if defaults:
        parser.set_defaults_with_config(**defaults)
    try:
        return tuple(parser.parse_args_and_config(args=argv))
    except ValueError as err:
        if "arguments are not used" not in str(err):
            raise
        raise ConfigError(_unknown_arguments(argv, dataclass_types, prog)) from err


def _unknown_arguments(argv: Sequence[str], dataclass_types: Sequence[type], prog: str) -> str:
    known = option_names(dataclass_types)
    unknown = [a.split("=")[0] for a in argv if a.startswith("--")]
    unknown = [a for a in unknown if a[2:].replace("-", "_") not in known and a != "--config"]
    named = ", ".join(f"{a}{_did_you_mean(a[2:], known)}" for a in unknown) or " ".join(argv)
    return f"unknown option(s) {named}; `{prog} --help` lists the options"


def option_names(dataclass_types: Sequence[type]) -> set[str]:
    return {f.name for t in dataclass_types for f in dataclasses.fields(t)}


def _did_you_mean(name: str, known: set[str], prefix: str = "--") -> str:
    close = difflib.get_close_matches(name.replace("-", "_"), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _check_keys(path: Path, dataclass_types: Sequence[type], prog: str = "macaroon") -> None:
    """Name the file and the key when a YAML config holds an unknown option."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a date like 2001-13-45
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        raise ConfigError(f"{path}: empty; write one `option: value` per line (see configs/)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    if not isinstance(data.get("env", {}), dict):
        raise ConfigError(f"{path}: option env: expected a mapping VARIABLE: value")
    known = option_names(dataclass_types) | {"env"}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        named = ", ".join(f"{key}{_did_you_mean(key, known, '')}" for key in unknown)
        raise ConfigError(
            f"{path}: unknown option(s) {named}; `{prog} --help` and docs/CONFIG.md list "
            "the options"
        )
    hints = _field_types(dataclass_types)
    for key, value in data.items():
        if key in hints and not _fits(value, hints[key]):
            raise ConfigError(
                f"{path}: option {key}: {value!r} is not {_describe(hints[key])}; fix the "
                "value (quote text that YAML reads as a number, date or true/false)"
            )


def _field_types(dataclass_types: Sequence[type]) -> dict[str, object]:
    """Each option's type, resolved where it can be (TRL's classes may not resolve)."""
    types: dict[str, object] = {}
    for cls in dataclass_types:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - an annotation we cannot resolve is not checked
            hints = {}
        for f in dataclasses.fields(cls):
            types.setdefault(f.name, hints.get(f.name, typing.Any))
    return types


_TRUTH = {"yes", "no", "true", "false", "t", "f", "y", "n", "1", "0"}


def _fits(value: object, expected: object) -> bool:
    """Whether a YAML value can fill an option of type `expected` (as the parser converts
    text: `1e-4` is text to YAML and a float to the option)."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if origin in (list, tuple, set):
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool) or (isinstance(value, str) and value.lower() in _TRUTH)
    if expected in (int, float):
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float):
            return expected is float or isinstance(value, int)
        return isinstance(value, str) and _converts(value, expected)
    if expected is str:
        return isinstance(value, str)
    return True  # enums and other classes: the parser decides


def _converts(text: str, kind: type) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _describe(expected: object) -> str:
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false",
             type(None): "empty (null)"}  # fmt: skip
    args = typing.get_args(expected) if typing.get_origin(expected) else (expected,)
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)


class ConfigError(ValueError):
    """A config file or option is wrong; the message names the file and the option."""
