"""Where a model comes from (a local folder or a Hub id), and why it cannot be found.

transformers and the Hub client raise `OSError` for a model that is not there, the same
class as a full disk. Left alone, a mistyped path reads as a disk problem. So a model is
checked before any weights load (`check_model`), and an error raised while loading one is
turned into a `ModelNotFoundError` that says what was looked for and what to do
(`model_errors`); a real disk error (`is_disk_error`) passes through untouched.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What the Hub accepts as a repo id: `name` or `namespace/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# The errors of a machine that cannot write (or read) a file, as opposed to a bad name.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                         errno.EIO, errno.EFBIG})  # fmt: skip
TINY_HINT = "`macaroon tiny-model --out DIR` builds a small local model to try things with"


class ModelNotFoundError(ValueError):
    """A model or adapter named by an option is not there; says what was looked for and the fix."""


def is_disk_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def is_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and not model.startswith((".", "~"))


def check_model(model: str, option: str = "--model", revision: str | None = None) -> None:
    """Refuse, before any weights load, a model that is neither a model folder here nor a
    Hub id that can be fetched (offline: one in the local cache)."""
    path = Path(model).expanduser()
    if path.exists():
        check_model_folder(path, option)
        return
    if not is_hub_id(model):
        raise ModelNotFoundError(
            f"{option} {model}: model folder not found. Check the path (relative paths start "
            f"at {Path.cwd()}); {TINY_HINT}"
        )
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and not _cached(model, revision):
        raise ModelNotFoundError(
            f"{option} {model}: no folder of that name here, and as a Hub id it is not in the "
            f"local Hugging Face cache ({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE=1 "
            "forbids downloading it. Unset HF_HUB_OFFLINE to download it, pass a local "
            f"folder, or check the spelling; {TINY_HINT}"
        )


def check_model_folder(path: Path, option: str = "--model") -> None:
    if not path.is_dir():
        raise ModelNotFoundError(
            f"{option} {path}: is a file; give the folder that holds the model's config.json"
        )
    if (path / "config.json").is_file():
        return
    if (path / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"{option} {path}: is a LoRA adapter (a `macaroon train` output), not a model: "
            "pass it as --adapter (eval) or --init_adapter (train), with its base as --model"
        )
    raise ModelNotFoundError(
        f"{option} {path}: holds no config.json, so it is no model folder; give the folder "
        f"`save_pretrained` wrote (or a Hub id); {TINY_HINT}"
    )


def check_adapter(adapter: str, option: str = "--adapter", contents: bool = True) -> None:
    """A training output: an adapter folder or merged weights (`contents`: check that it
    holds one; off where the caller names what is missing itself)."""
    path = Path(adapter).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"{option} {adapter}: adapter folder not found. Check the path: it is the OUT "
            "of `macaroon train` (or one of its checkpoint-N folders)"
        )
    if not path.is_dir():
        raise ModelNotFoundError(f"{option} {adapter}: is a file; give the training's OUT folder")
    if contents and not any(
        (path / name).is_file() for name in ("adapter_config.json", "config.json")
    ):
        raise ModelNotFoundError(
            f"{option} {adapter}: holds neither adapter_config.json nor config.json, so it is "
            "no training output; give the OUT of `macaroon train` (or its checkpoint-N)"
        )


def _cached(model: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json", revision=revision)
    except ValueError:  # not a valid repo id after all
        return False
    return isinstance(found, str)


@contextmanager
def model_errors(model: str, option: str = "--model") -> Iterator[None]:
    """Turn the errors of loading `model` into a ModelNotFoundError naming it and the fix."""
    try:
        yield
    except ModelNotFoundError:
        raise
    except (OSError, ValueError) as err:
        message = describe_load_error(err, model, option)
        if message is None:
            raise
        raise ModelNotFoundError(message) from err


def describe_load_error(err: BaseException, model: str, option: str = "--model") -> str | None:
    """What went wrong fetching `model`, in words, or None when `err` is no such error."""
    from huggingface_hub import errors

    if is_disk_error(err):
        return None
    chain = _chain(err)
    if any(isinstance(e, errors.GatedRepoError) for e in chain):
        return (f"{option} {model}: a gated model; accept its terms on "
                f"https://huggingface.co/{model} and log in (`huggingface-cli login`)")  # fmt: skip
    if any(isinstance(e, errors.RepositoryNotFoundError) for e in chain):
        return (f"{option} {model}: no such model on the Hub (or it is private: "
                "`huggingface-cli login`); check the spelling, or pass a local folder")  # fmt: skip
    if any(isinstance(e, errors.RevisionNotFoundError) for e in chain):
        return f"{option} {model}: no such revision on the Hub; check --revision"
    if any(isinstance(e, errors.HFValidationError) for e in chain) or not Path(model).exists():
        if any(isinstance(e, errors.OfflineModeIsEnabled | errors.LocalEntryNotFoundError)
               for e in chain) or _offline():  # fmt: skip
            return (f"{option} {model}: not found here, nor in the local Hugging Face cache, "
                    "and HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE, pass a "
                    f"local folder, or check the spelling; {TINY_HINT}")  # fmt: skip
        if not is_hub_id(model):
            return (f"{option} {model}: model folder not found; check the path; "
                    f"{TINY_HINT}")  # fmt: skip
        return (f"{option} {model}: could not be fetched from the Hub ({_first_line(err)}); "
                "check the connection and the spelling, log in for a private model "
                "(`huggingface-cli login`), or pass a local folder")  # fmt: skip
    if isinstance(err, OSError) and err.errno is None:
        # A folder that exists but lacks a file transformers needs (a tokenizer, weights).
        return (f"{option} {model}: cannot be loaded from that folder ({_first_line(err)}); "
                "give a folder `save_pretrained` wrote (config, weights, processor)")  # fmt: skip
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
