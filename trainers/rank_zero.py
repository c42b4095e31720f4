"""Work that one process does for all: every rank's part gathered to rank 0, each its answer.

A multi-process run (accelerate, torchrun) calls the GRPO reward on every rank at the same
step. The judge's record store has one writer, and a pair sampled on two ranks should be
judged once, so rank 0 does the judging for the whole batch. Gathered and answered over
gloo (on GPUs too: a side group, so no object goes through NCCL and CUDA memory). An
exception on any rank is sent on as a marker, so every rank raises instead of one waiting
for a collective that never comes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_GROUPS: dict[str, Any] = {}


@dataclass
class _Failure:
    rank: int
    message: str


class RankFailed(RuntimeError):
    """Another rank failed its part of work done on rank 0 (its message says which and why)."""


def world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed run; (0, 1) outside one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _group():
    """A gloo group for Python objects: the default one when it is gloo already."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    if "gloo" not in _GROUPS:  # every rank gets here at its first call: new_group is collective
        _GROUPS["gloo"] = dist.new_group(backend="gloo")
    return _GROUPS["gloo"]


def on_rank_zero(part: Callable[[], Any], work: Callable[[list[Any]], Sequence[Any]]) -> Any:
    """`part()` on every rank; `work(parts)` on rank 0 with every rank's part, in rank order,
    returning one answer per rank; this rank's answer. Outside a multi-process run: `work`
    on this process's part alone. Every rank must call this at the same point."""
    rank, size = world()
    if size == 1:
        return work([part()])[0]
    import torch.distributed as dist

    group = _group()
    own: BaseException | None = None
    try:
        mine = part()
    except Exception as err:  # told to rank 0, which tells every rank
        own, mine = err, _Failure(rank, f"{type(err).__name__}: {err}")
    parts = [None] * size if rank == 0 else None
    dist.gather_object(mine, parts, dst=0, group=group)
    answers = None
    if rank == 0:
        failed = next((p for p in parts if isinstance(p, _Failure)), None)
        if failed is None:
            try:
                answers = list(work(parts))
            except Exception as err:
                own, failed = err, _Failure(0, f"{type(err).__name__}: {err}")
        answers = [failed] * size if failed else answers
    received = [None]
    dist.scatter_object_list(received, answers, src=0, group=group)
    answer = received[0]
    if isinstance(answer, _Failure):
        if own is not None:
            raise own
        raise RankFailed(f"rank {answer.rank} of {size} failed: {answer.message}")
    return answer
