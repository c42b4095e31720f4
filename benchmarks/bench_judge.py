"""Judging throughput: `macaroon judge` and METHOD=grpo's reward, at concurrency 32 vs 1.

The original evaluation judged one response at a time. Here the judge stage (rubric
prompts, record store, openai backend) runs against a stub OpenAI-compatible server
that answers every call after 100 ms, in a process of its own; a rerun of the same
judgments must make zero calls. Targets: >= 20x and >= 80% of the ideal 320 calls/s.
The GRPO reward (trainers/reward.py) judges each generation batch of sampled answers
through the same code: it is timed the same way, 32 answers per call (the generation batch
of configs/train/grpo.yaml: 4 questions x 8 answers). Each call waits for its slowest
answer, as a GRPO step must, so it stays below the stage's figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from openai_stub import stub_process  # noqa: E402

from pipeline.backends import Sampling  # noqa: E402
from pipeline.backends.openai_api import OpenAIBackend  # noqa: E402
from pipeline.criteria import load_criteria  # noqa: E402
from pipeline.judge import judge_item, load_judge_template  # noqa: E402
from pipeline.runner import run_stage  # noqa: E402
from pipeline.store import RecordStore  # noqa: E402
from trainers.config import RewardJudgeConfig  # noqa: E402
from trainers.reward import JudgeReward  # noqa: E402

BATCH = 32  # answers per GRPO reward call: configs/train/grpo.yaml's generation batch
IMAGES = sorted((REPO / "datasets" / "samples" / "images").glob("*.jpg"))


def items(n: int, tag: str) -> list:
    types = list(load_criteria(REPO / "datasets" / "criteria").values())
    template = load_judge_template(REPO / "datasets" / "prompts")
    return [
        judge_item(template, types[i % len(types)], IMAGES[i % len(IMAGES)],
                   f"question {tag} {i}?", f"response {i}", "judge", Sampling(max_tokens=64))
        for i in range(n)
    ]  # fmt: skip


def judge(base_url: str, work: list, concurrency: int, store_path: Path) -> tuple[float, int]:
    backend = OpenAIBackend("judge", base_url=base_url, concurrency=concurrency)
    with backend, RecordStore(store_path) as store:
        start = time.perf_counter()
        stats = run_stage("judge", work, backend, store, progress=False)
        return len(work) / (time.perf_counter() - start), stats.generated + stats.failed


def reward(base_url: str, n: int, concurrency: int, store_path: Path, tag: str) -> float:
    """Calls/s of the GRPO reward judging `n` distinct answers, BATCH per reward call."""
    cfg = RewardJudgeConfig(judge_model="judge", judge_base_url=base_url,
                            judge_concurrency=concurrency, judge_max_tokens=64)  # fmt: skip
    judge = JudgeReward(cfg, store_path, max_completion_length=256)
    types = list(judge.types)
    try:
        start = time.perf_counter()
        for first in range(0, n, BATCH):
            batch = range(first, min(first + BATCH, n))
            judge(prompts=[None] * len(batch), completions=[f"answer {tag} {i}" for i in batch],
                  question=[f"question {i}?" for i in batch],
                  question_type=[types[i % len(types)] for i in batch],
                  image_path=[str(IMAGES[i % len(IMAGES)]) for i in batch])  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        judge.close()
    assert judge.counts["calls"] == n, judge.counts
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=640)
    args = parser.parse_args()
    with stub_process(delay=args.delay) as base_url, tempfile.TemporaryDirectory() as tmp:
        judge(base_url, items(32, "warm"), 32, Path(tmp) / "warm.jsonl")
        sequential, _ = judge(base_url, items(args.sequential, "s"), 1, Path(tmp) / "s.jsonl")
        work = items(args.concurrent, "c")
        concurrent, _ = judge(base_url, work, 32, Path(tmp) / "c.jsonl")
        _, rerun_calls = judge(base_url, work, 32, Path(tmp) / "c.jsonl")
        reward_one = reward(base_url, args.sequential, 1, Path(tmp) / "r1.jsonl", "s")
        reward_32 = reward(base_url, args.concurrent, 32, Path(tmp) / "r32.jsonl", "c")
    ideal = 32 / args.delay
    print(f"sequential: {sequential:.1f} calls/s; concurrency 32: {concurrent:.1f} calls/s")
    print(f"GRPO reward: sequential {reward_one:.1f} calls/s; concurrency 32: {reward_32:.1f}")
    print(
        f"judge concurrency 32 vs one at a time: ratio {concurrent / sequential:.1f}x "
        f"(target 20x), "
        f"{concurrent / ideal:.0%} of ideal {ideal:.0f}/s (target 80%); cached rerun: "
        f"{rerun_calls} calls; GRPO reward: ratio {reward_32 / reward_one:.1f}x, "
        f"{reward_32 / ideal:.0%} of ideal"
    )


if __name__ == "__main__":
    main()
