"""Our models under lmms-eval: the base model (any backend) or a trained adapter (hf, with its
conditioning: a CRL adapter gets its `good` token before each question, as in `make eval`).

`macaroon eval-general` hands lmms-eval an instance; lmms-eval's own CLI finds it as
`--model macaroon` through the `lmms_eval.models` entry point (evaluation/lmms_plugin.py):

    lmms-eval --model macaroon --model_args model=DIR,adapter=outputs/train/crl --tasks pope
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lmms_eval.api.model import lmms

from evaluation.run import answer_backend, conditioning_record
from pipeline.adapters import AnswerConfig, conditioned
from pipeline.backends import Request, Sampling, close_backend, generate_in_order


class MacaroonLMM(lmms):
    """An lmms-eval model over our backends (pipeline/backends, trainers/inference.py)."""

    is_simple = True

    def __init__(self, config: AnswerConfig | None = None, seed: int = 0, **options) -> None:
        super().__init__()
        # lmms-eval's CLI passes model_args as keywords, plus batch_size/device/... (None
        # when unset); only the answer options are ours.
        known = AnswerConfig.__dataclass_fields__
        given = {k: v for k, v in options.items() if k in known and v is not None}
        self.config = config or AnswerConfig(**given)
        self.seed = seed
        self.record = conditioning_record(self.config)
        self.backend = answer_backend(self.config)
        self.failed: list[str] = []  # why answers failed (lmms-eval scores them as "")

    def generate_until(self, requests) -> list[str]:
        """One answer per request, batched by the backend; cut at the task's `until`."""
        with tempfile.TemporaryDirectory(prefix="macaroon-lmms-") as folder:
            built = [self._request(req, Path(folder), n) for n, req in enumerate(requests)]
            done = generate_in_order(self.backend, [request for request, _ in built])
        answers = []
        for completion, (_, until) in zip(done, built, strict=True):
            if not completion.ok:
                self.failed.append(completion.error or "no reason given")
                answers.append("")
                continue
            answers.append(_cut(completion.text or "", until))
        return answers

    def _request(self, req, folder: Path, number: int) -> tuple[Request, list[str]]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
        visuals = [v for v in (doc_to_visual(self.task_dict[task][split][doc_id]) or []) if v]
        paths = []
        for index, image in enumerate(visuals):
            path = folder / f"{number}-{index}.png"  # lossless: the pixels the task gave
            image.convert("RGB").save(path)
            paths.append(path)
        content = [{"type": "image"} for _ in paths] + [{"type": "text", "text": context}]
        messages = conditioned([{"role": "user", "content": content}], self.record)
        gen_kwargs = gen_kwargs or {}
        sampling = Sampling(
            max_tokens=int(gen_kwargs.get("max_new_tokens") or 128),
            temperature=float(gen_kwargs.get("temperature") or 0.0),
            seed=self.seed,
        )
        until = gen_kwargs.get("until") or []
        stops = [until] if isinstance(until, str) else list(until)
        return Request(messages, tuple(paths), sampling), stops

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "the macaroon model answers generate_until tasks only (POPE, MME, ScienceQA-IMG, "
            "PIE); choose tasks whose output_type is generate_until"
        )

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("the macaroon model answers single-round tasks only")

    def close(self) -> None:
        if self.backend is not None:
            close_backend(self.backend)
            self.backend = None


def _cut(text: str, until: list[str]) -> str:
    """The text up to the first stop string the task names."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop)[0]
    return text
