"""One config system: dataclasses filled from a YAML file, then from the command line.

`macaroon CMD --config configs/CMD.yaml --field value` gives every option one name in
YAML and on the command line, as TRL's `TrlParser` does for its trainers.
"""

from __future__ import annotations

import dataclasses
import difflib
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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    known = option_names(dataclass_types) | {"env"}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        named = ", ".join(f"{key}{_did_you_mean(key, known, '')}" for key in unknown)
        raise ConfigError(
            f"{path}: unknown option(s) {named}; `{prog} --help` and docs/CONFIG.md list "
            "the options"
        )


class ConfigError(ValueError):
    """A config file or option is wrong; the message names the file and the option."""
