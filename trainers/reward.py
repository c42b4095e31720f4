"""METHOD=grpo's reward: the rubric judge's verdict on each sampled answer.

The judge is `macaroon eval`'s: the same template, strict parser, per-type labels, record
store and backends (pipeline/judge.py). A judgment is a record keyed by judge, rubric,
image, question and answer, so a pair judged once (in this run, or in an earlier one that
shares `--judge_records`) is never sent again. TRL's GRPOTrainer treats a None reward as
"no signal": the answer is left out of its group's mean and std and gets advantage 0, so
a failed or unparsed judgment never counts as a wrong answer.

Under several processes (accelerate, torchrun) the store still has one writer: each rank
sends its answers to rank 0, which judges them all at once (a pair sampled on two ranks is
sent once) and returns each rank its verdicts (trainers/rank_zero.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backends import Backend, close_backend
from pipeline.criteria import PARTIAL_VERDICT, QuestionType, load_criteria
from pipeline.judge import judge_item, load_judge_template, parse_verdict, resolve_judge
from pipeline.runner import Item, pending, run_stage
from pipeline.store import OK, RecordStore
from trainers.config import RewardJudgeConfig
from trainers.rank_zero import on_rank_zero

# A verdict's reward. Ambiguous is a label of tier II types only (a partial handling).
SCORES = {"True": 1.0, PARTIAL_VERDICT: 0.5, "False": 0.0}


def score(verdict: str | None, completion_tokens: int, max_tokens: int, penalty: float):
    """The reward of one judged answer; None (no signal) when there is no verdict."""
    if verdict is None:
        return None
    return SCORES[verdict] - penalty * min(completion_tokens / max_tokens, 1.0)


@dataclass
class JudgeReward:
    """A TRL reward function: `(prompts, completions, question, question_type, image_path,
    completion_ids, ...) -> [reward or None]`. Opens the judge on first use (on rank 0 only,
    under several processes); `close()` ends it. `counts` are the whole run's, over every
    rank's answers, alike on every rank."""

    cfg: RewardJudgeConfig
    store_path: Path
    max_completion_length: int
    counts: Counter = field(default_factory=Counter)  # calls, cached, failed, unparsed, judged

    def __post_init__(self) -> None:
        self.types: dict[str, QuestionType] = load_criteria(self.cfg.criteria)
        self.template = load_judge_template(self.cfg.prompts)
        self.judge = resolve_judge(self.cfg)
        self.backend: Backend | None = None
        self.store: RecordStore | None = None

    def __call__(
        self, prompts, completions, question, question_type, image_path, completion_ids=None,
        log_metric=None, **_,
    ) -> list[float | None]:  # fmt: skip
        def part() -> list[Item]:
            return [
                judge_item(self.template, self.types[qtype], image, q, _text(completion),
                           self.judge.identity, self.judge.sampling,
                           structured=self.judge.structured,
                           fields={"question": q, "question_type": qtype, "image": str(image),
                                   "response": _text(completion)})
                for q, qtype, image, completion in zip(question, question_type, image_path,
                                                       completions, strict=True)
            ]  # fmt: skip

        # Under several processes rank 0 judges every rank's answers: one store, one writer.
        judged, batch = on_rank_zero(part, self._judge)
        rewards = []
        for index, ((status, text), qtype) in enumerate(zip(judged, question_type, strict=True)):
            length = len(completion_ids[index]) if completion_ids is not None else 0
            verdict = self._verdict(status, text, qtype)
            rewards.append(
                score(verdict, length, self.max_completion_length, self.cfg.length_penalty)
            )
        self.counts.update(batch)
        if log_metric is not None:  # the whole batch's, alike on every rank (TRL averages them)
            for name in ("calls", "cached", "failed", "unparsed"):
                log_metric(f"judge/{name}", float(batch[name]))
        return rewards

    def _judge(self, parts: list[list[Item]]) -> list[tuple[list[tuple[str, str | None]], Counter]]:
        """Every rank's items judged at once, a pair asked on two ranks once. Per rank: the
        (status, text) of each of its items, and the counts of the whole batch."""
        items = [item for part in parts for item in part]
        store = self._open_store()
        # A failure is retried the next time its pair comes up: it was no verdict.
        backend = self._backend() if pending(items, store, retry_failed=True) else None
        stats = run_stage("reward", items, backend, store, retry_failed=True, progress=False)
        batch = Counter(calls=stats.generated + stats.failed, cached=stats.cached)
        answers = []
        for part in parts:
            judged = [(store.get(i.key)["status"], store.get(i.key)["text"]) for i in part]
            for (status, text), item in zip(judged, part, strict=True):
                verdict = self._verdict(status, text, item.fields["question_type"])
                outcome = "failed" if status != OK else "unparsed" if verdict is None else "judged"
                batch[outcome] += 1
            answers.append(judged)
        return [(judged, batch) for judged in answers]

    def _verdict(self, status: str, text: str | None, qtype: str) -> str | None:
        if status != OK:
            return None
        return parse_verdict(text, list(self.types[qtype].labels))

    def _open_store(self) -> RecordStore:
        if self.store is None:
            self.store = RecordStore(self.store_path, flush_every=1)
        return self.store

    def _backend(self) -> Backend:
        if self.backend is None:
            from pipeline.backends import open_backend

            self.backend = open_backend(self.judge.backend)
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            close_backend(self.backend)
            self.backend = None
        if self.store is not None:
            self.store.close()
            self.store = None


def _text(completion) -> str:
    """A TRL completion (conversational: [{"role": "assistant", "content": ...}]) as text."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content)
