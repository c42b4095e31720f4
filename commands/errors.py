"""What an exception means to the person at the keyboard: one line and an exit code.

2: the input is wrong (a file, an option, a model that is not there): nothing was done.
1: the run is incomplete (a full disk, an endpoint that is down): finished records are kept
and the same command goes on from there. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pipeline.backends import EndpointUnreachable
from pipeline.lock import LockError
from pipeline.model_source import ModelNotFoundError, describe_load_error, is_disk_error

BAD_INPUT, INCOMPLETE = 2, 1


def explain(err: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an error a user can act on; None for a bug."""
    if isinstance(err, ModelNotFoundError | LockError):
        return str(err), BAD_INPUT
    if isinstance(err, EndpointUnreachable):
        return str(err), INCOMPLETE
    if is_disk_error(err):
        return _disk(err), INCOMPLETE
    model_problem = _model_problem(err)
    if model_problem:
        return model_problem, BAD_INPUT
    if isinstance(err, FileExistsError | NotADirectoryError) and err.filename:
        return (
            f"{err.filename}: a file is in the way where a folder is needed; choose another "
            "output folder (--out) or move that file"
        ), BAD_INPUT
    if isinstance(err, UnicodeDecodeError):  # a ValueError too, but say what to do
        return f"a file is not UTF-8 text ({err}); save it as UTF-8", BAD_INPUT
    if isinstance(err, ValueError | FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return str(err), BAD_INPUT
    if isinstance(err, OSError):  # neither a disk nor a model: say what it is, blame nothing
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        return f"{err.strerror or err}{where}", INCOMPLETE
    return None


def _disk(err: OSError) -> str:
    where = f" {err.filename}" if getattr(err, "filename", None) else ""
    return (
        f"cannot write{where}: {err.strerror or err}; free space or choose a writable output "
        "folder (finished records are kept)"
    )


def _model_problem(err: BaseException) -> str | None:
    """A Hub or transformers error that escaped `model_errors` (no model name at hand)."""
    if type(err).__module__.split(".")[0] not in ("huggingface_hub", "transformers") and not (
        isinstance(err, OSError) and err.errno is None and _from_hub(err)
    ):
        return None
    message = describe_load_error(err, "(a model)", "the model")
    return message or f"could not load a model: {str(err).strip().splitlines()[0]}"


def _from_hub(err: BaseException) -> bool:
    cause = err.__cause__ or err.__context__
    return cause is not None and type(cause).__module__.split(".")[0] == "huggingface_hub"
