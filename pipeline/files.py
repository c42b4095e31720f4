"""A user's text file, read as lines of UTF-8, or an error naming the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path


class InputFileError(ValueError):
    """A file given on the command line cannot be read as asked; names it and the fix."""


def read_text_file(path: str | Path, option: str) -> list[str]:
    """The lines of the UTF-8 text file `option` names (a BOM is tolerated)."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{option} {path}: is a folder; give the file itself")
    if not path.is_file():
        raise InputFileError(f"{option} {path}: file not found; check the path")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise InputFileError(
            f"{option} {path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8"
        ) from err


def read_json_file(path: str | Path, what: str, fix: str) -> object:
    """The JSON value in `path`; a damaged file names itself, the place, and `fix`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputFileError(f"{path}: {what} is not UTF-8 text ({err.reason}); {fix}") from err
    except json.JSONDecodeError as err:
        raise InputFileError(
            f"{path}: {what} is not valid JSON (line {err.lineno} column {err.colno}: "
            f"{err.msg}); {fix}"
        ) from err
