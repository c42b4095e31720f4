"""`--executor ray`: N replicas of a backend as Ray actors behind the one Backend interface.

Each replica (a Ray actor) builds its backend once, from a factory, and answers batches of
requests. `RayBackend.generate` feeds the batches and yields their completions to the
caller as each batch returns, so the stage runner in the driver stays the record store's
only writer: resume, keys, failure records and --retry_failed are those of one process.

Faults are Ray's to handle (no scheduler of our own): a replica whose process dies is
restarted by Ray (`max_restarts`), which rebuilds its backend and reruns the batches it
held (`max_task_retries`). A batch's completions reach the driver only when the whole
batch returns, so a batch cut short by a death is neither lost nor stored twice.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from pipeline.backends import Backend, Completion, Request

# A replica is restarted at most this often, and each batch retried as often: enough for
# preempted or crashed nodes, few enough that a model that kills its process on every
# load (out of memory) ends the run instead of looping.
RESTARTS = 3
# Batches queued per replica: the next one is waiting when a batch returns.
DEPTH = 2
# What the replicas' processes must see as the driver does: offline switches, caches,
# tokens and telemetry opt-outs (a worker on another machine has its own environment).
FORWARDED_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "VLLM_", "TOKENIZERS_")
FORWARDED = ("DO_NOT_TRACK", "OMP_NUM_THREADS")


class Replica:
    """One copy of the backend in its own process; Ray makes it an actor."""

    def __init__(self, factory: Callable[[], Backend]):
        self.backend = factory()

    def pid(self) -> int:
        return os.getpid()

    def generate(self, requests: Sequence[Request], indices: Sequence[int]) -> list[Completion]:
        """The completions of `requests`, numbered by `indices` (their places in the run)."""
        return [replace(c, index=indices[c.index]) for c in self.backend.generate(requests)]

    def close(self) -> None:
        self.backend.close()


def forwarded_env() -> dict[str, str]:
    """The driver's variables that the replicas get (runtime_env env_vars)."""
    return {
        name: value
        for name, value in os.environ.items()
        if name.startswith(FORWARDED_PREFIXES) or name in FORWARDED
    }


def connect(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); with neither, start a local one.

    Reuses a connection the process already has (tests start one cluster per module).
    The cluster outlives the backend: Ray shuts it down when the process exits.
    """
    try:
        import ray
    except ImportError as err:  # a ValueError: the CLI says it in one line, exit status 2
        raise ValueError(
            "--executor ray needs Ray: pip install -e '.[ray]' (make setup installs it)"
        ) from err
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    else:  # the node goes by 127.0.0.1 (no lookup of this machine's address), no dashboard
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")


def default_gpus(cfg) -> float:
    """GPUs per replica when --gpus_per_replica is unset: those its engine uses, if any."""
    import ray

    if not ray.cluster_resources().get("GPU"):
        return 0.0
    return float(cfg.tensor_parallel_size if cfg.backend == "vllm" else 1)


class RayBackend:
    """The Backend protocol over `replicas` Ray actors, each built by `factory`."""

    def __init__(
        self,
        factory: Callable[[], Backend],
        name: str,
        model_id: str,
        replicas: int = 1,
        batch_size: int = 256,
        gpus_per_replica: float = 0.0,
        cpus_per_replica: float = 1.0,
    ):
        import ray

        if replicas < 1 or batch_size < 1:
            raise ValueError(f"--replicas {replicas}, --ray_batch_size {batch_size}: need >= 1")
        self.name, self.model_id, self.batch_size = name, model_id, batch_size
        actor = ray.remote(Replica).options(
            num_cpus=cpus_per_replica, num_gpus=gpus_per_replica,
            max_restarts=RESTARTS, max_task_retries=RESTARTS,
            runtime_env={"env_vars": forwarded_env()},
        )  # fmt: skip
        self.replicas = [actor.remote(factory) for _ in range(replicas)]
        try:  # every model loaded before the first batch; a load error surfaces here, whole
            self.pids = ray.get([r.pid.remote() for r in self.replicas])
        except ray.exceptions.RayError as err:
            self.close()
            # Ray's message is the replica's whole traceback; its last line is the reason.
            reason = str(err).strip().splitlines()[-1]
            raise RuntimeError(f"a {name} replica could not start: {reason}") from err

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        import ray

        # Small runs are cut finer, so that every replica gets work.
        per_replica = -(-len(requests) // (DEPTH * len(self.replicas)))
        indices, size = list(range(len(requests))), max(1, min(self.batch_size, per_replica))
        batches = deque(indices[start : start + size] for start in range(0, len(indices), size))
        running: dict = {}  # ObjectRef -> (replica, batch)
        alive = list(self.replicas)

        def feed(replica) -> None:
            if batches:
                batch = batches.popleft()
                ref = replica.generate.remote([requests[i] for i in batch], batch)
                running[ref] = (replica, batch)

        for replica in alive:
            for _ in range(DEPTH):
                feed(replica)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            replica, batch = running.pop(ref)
            try:
                done = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                # Restarts and retries spent: this batch fails (stored as failures, for
                # --retry_failed), the others go on to the replicas left.
                if replica in alive:
                    alive.remove(replica)
                yield from (Completion(i, None, error=f"replica died: {err}") for i in batch)
                if not alive and batches:
                    raise RuntimeError(f"every {self.name} replica died; rerun to resume") from err
                continue
            feed(replica)  # before the driver stores these: the replica never waits on it
            yield from done

    def close(self) -> None:
        import ray

        for replica in self.replicas:
            ray.kill(replica)
        self.replicas = []
