"""`--executor ray` on a real local Ray cluster (CPU): the same records as one process.

One cluster serves the module (starting one costs ~5-10 s). This machine has 2 cores, so
Ray is given 4 logical CPUs: two replicas and the driver's own tasks fit side by side.
"""

import json
import os
import shutil
import signal
from dataclasses import replace
from functools import partial

import pytest
from conftest import CRITERIA, REPO

from imagination.imagine import ImagineConfig, _stage_sampling, run_imagine
from imagination.prompts import load_templates
from imagination.questions import question_items
from pipeline.backends import Completion, backend_identity, open_backend
from pipeline.criteria import load_criteria
from pipeline.images import list_images
from pipeline.runner import run_stage
from pipeline.store import RecordStore

ray = pytest.importorskip("ray")  # CI installs the extra (make setup): never skipped there

STAGE_FILES = ("questions.jsonl", "responses.jsonl", "judgments.jsonl")


@pytest.fixture(scope="module")
def cluster():
    # The replicas import this module (the fault double below) and the package from here.
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def images(sample_images):
    return sample_images("sample_001.jpg", "sample_002.jpg")


@pytest.fixture(scope="module")
def criteria(tmp_path_factory):
    """One question type of each tier: every kind of prompt, a third of the work."""
    folder = tmp_path_factory.mktemp("criteria")
    for name in ("false_premise", "subject_ambiguity", "hidden_human_preferences"):
        shutil.copy(CRITERIA / f"{name}.yaml", folder)
    return folder


def config(model, images, criteria, out, **extra) -> ImagineConfig:
    # Greedy throughout: a sampled text depends on the batch it was drawn in, greedy ones
    # do not, so the two executors must agree text for text. The judge filter runs on hf
    # too, so every generating stage of imagine goes through the executor.
    return ImagineConfig(
        model=str(model), images=str(images), criteria=str(criteria), out=str(out),
        question_max_tokens=12, question_temperature=0.0, response_max_tokens=16,
        judge_filter=True, judge_backend="hf", judge_max_tokens=6, drop_truncated=False,
        progress=False, **extra,
    )  # fmt: skip


def records(folder, name) -> list[dict]:
    with open(folder / name) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def in_process(tiny_model, images, criteria, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return run_imagine(config(tiny_model("llava"), images, criteria, out)), out


@pytest.fixture(scope="module")
def on_ray(cluster, tiny_model, images, criteria, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray")
    cfg = config(
        tiny_model("llava"), images, criteria, out, executor="ray", replicas=2, ray_batch_size=5
    )
    return run_imagine(cfg), out, cfg


def test_ray_run_stores_the_records_of_the_in_process_run(in_process, on_ray):
    (local, local_out), (summary, ray_out, _) = in_process, on_ray
    for name in STAGE_FILES:
        mine, theirs = records(ray_out, name), records(local_out, name)
        assert len(mine) == len({r["key"] for r in mine}) > 0  # each item stored once
        by_key = {r["key"]: r for r in theirs}
        assert sorted(by_key) == sorted(r["key"] for r in mine)
        for record in mine:  # key for key, text for text, usage and stop reason too
            assert record == by_key[record["key"]]
    assert summary["kept"] == local["kept"] and summary["rows"] == local["rows"]
    assert summary["model_calls"] == local["model_calls"] > 0


def test_identical_ray_rerun_makes_no_model_call(on_ray):
    _, out, cfg = on_ray
    again = run_imagine(cfg)
    assert again["model_calls"] == 0
    stages = again["stages"]
    assert all(s["generated"] == 0 and s["cached"] == s["total"] for s in stages), stages


class DiesOnce:
    """The real hf backend whose process kills itself (SIGKILL) in the middle of its second
    batch, once per `marker`: a replica lost mid-run, with completions in flight."""

    name = "hf"

    def __init__(self, cfg: ImagineConfig, marker: str):
        self.inner, self.marker, self.batches = open_backend(cfg), marker, 0
        self.model_id = self.inner.model_id

    def generate(self, requests):
        self.batches += 1
        for n, completion in enumerate(self.inner.generate(requests)):
            if self.batches == 2 and n == 1 and not os.path.exists(self.marker):
                with open(self.marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            yield completion

    def close(self) -> None:
        self.inner.close()


def test_a_replica_killed_mid_run_is_restarted_and_nothing_is_lost_or_doubled(
    cluster, in_process, tiny_model, images, criteria, tmp_path
):
    from pipeline.backends.ray_executor import RayBackend

    cfg = config(tiny_model("llava"), images, criteria, tmp_path)
    items = question_items(
        list_images(cfg.images), load_criteria(cfg.criteria),
        load_templates(cfg.prompts)["question"], backend_identity(cfg), cfg.questions_per_type,
        _stage_sampling(cfg, "question"),
    )  # fmt: skip
    marker = tmp_path / "killed"
    # 6 items in batches of 2: the first replica holds two batches, and dies in its second.
    backend = RayBackend(partial(DiesOnce, cfg, str(marker)), "hf", cfg.model, 2, batch_size=2)
    try:
        with RecordStore(tmp_path / "questions.jsonl") as store:
            stats = run_stage("questions", items, backend, store, progress=False)
        pids = ray.get([replica.pid.remote() for replica in backend.replicas])
    finally:
        backend.close()
    killed = int(marker.read_text())  # the fault happened: a replica died holding a batch
    assert killed in backend.pids and killed not in pids  # ...and Ray started a new one
    assert (stats.generated, stats.failed) == (len(items), 0)
    stored = records(tmp_path, "questions.jsonl")
    assert len(stored) == len({r["key"] for r in stored}) == len(items)
    expected = {r["key"]: r for r in records(in_process[1], "questions.jsonl")}
    assert all(r == expected[r["key"]] for r in stored)


class EnvironmentBackend:
    """Answers each request with the variables named in it, as its process sees them."""

    name = model_id = "environment"

    def generate(self, requests):
        for i, request in enumerate(requests):
            names = request.messages[0]["content"].split()
            yield Completion(i, " ".join(f"{n}={os.environ.get(n)}" for n in names))

    def close(self) -> None:
        pass


def test_replicas_see_the_drivers_offline_settings(cluster, monkeypatch):
    from pipeline.backends import Request
    from pipeline.backends.ray_executor import RayBackend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "1")
    backend = RayBackend(EnvironmentBackend, "environment", "environment", replicas=1)
    try:
        request = Request([{"role": "user", "content": "HF_HUB_OFFLINE VLLM_NO_USAGE_STATS"}])
        (done,) = backend.generate([request])
    finally:
        backend.close()
    assert done.text == "HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1"


def missing_model():
    raise OSError("outputs/models/nowhere is not a model folder")


def test_a_replica_that_cannot_load_its_model_stops_the_run_with_the_reason(cluster):
    from pipeline.backends.ray_executor import RayBackend

    with pytest.raises(
        RuntimeError,
        match="a hf replica could not start: OSError: outputs/models/nowhere is not a model",
    ):
        RayBackend(missing_model, "hf", "nowhere", replicas=1)


def test_keys_do_not_depend_on_the_executor(tiny_model):
    cfg = ImagineConfig(model=str(tiny_model("llava")))
    scaled = replace(
        cfg, executor="ray", ray_address="auto", replicas=8, gpus_per_replica=2,
        cpus_per_replica=4, ray_batch_size=7,
    )  # fmt: skip
    assert backend_identity(scaled) == backend_identity(cfg)


def test_bad_executor_options_are_named():
    with pytest.raises(ValueError, match="--executor 'slurm': unknown; choose one of local, ray"):
        open_backend(ImagineConfig(executor="slurm"))
    with pytest.raises(ValueError, match="--replicas 0, --ray_batch_size 256: both must be >= 1"):
        open_backend(ImagineConfig(executor="ray", replicas=0))


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter with its training record, as `make train` leaves one (untrained)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = tiny_model("llava")
    folder = tmp_path_factory.mktemp("adapter")
    model = AutoModelForImageTextToText.from_pretrained(base)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    record = {"method": "crl", "conditioning": "good", "base_model": str(base)}
    (folder / "macaroon.json").write_text(json.dumps(record))
    return folder


def test_eval_answers_of_an_adapter_on_ray_equal_in_process_ones(cluster, adapter, tmp_path):
    from commands.cli import main

    argv = ["generate", "--adapter", str(adapter), "--max_tokens", "6", "--progress", "false"]
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, on_ray = (records(tmp_path / name, "generations.jsonl") for name in ("local", "ray"))
    assert len(on_ray) == 24 and all(r["method"] == "crl" and r["status"] == "ok" for r in on_ray)
    assert sorted(on_ray, key=lambda r: r["key"]) == sorted(local, key=lambda r: r["key"])
