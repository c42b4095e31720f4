"""`hf` backend: transformers `AutoModelForImageTextToText`, left padding, real batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipeline.backends import Completion, Request, Sampling
from pipeline.images import open_image


class HFBackend:
    name = "hf"

    def __init__(
        self,
        model: str,
        batch_size: int = 16,
        dtype: str = "auto",
        device: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_id, self.batch_size = model, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":  # bf16 where the hardware has it; float32 on CPU for exactness
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        common = dict(revision=revision, trust_remote_code=trust_remote_code)
        self.processor = AutoProcessor.from_pretrained(model, **common)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batching needs it
        self.model = AutoModelForImageTextToText.from_pretrained(
            model, dtype=getattr(torch, dtype), **common
        ).to(self.device)
        self.model.eval()

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        # generate() takes one set of sampling parameters and one image count per batch,
        # so group by those; sorting by length inside a group keeps padding small.
        groups: dict[tuple[Sampling, int], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.sampling, len(request.images)), []).append(i)
        for (sampling, _), group in groups.items():
            indices = sorted(group, key=lambda i: _length(requests[i]))
            for start in range(0, len(indices), self.batch_size):
                yield from self._batch(requests, indices[start : start + self.batch_size], sampling)

    def _batch(
        self, requests: Sequence[Request], indices: list[int], sampling: Sampling
    ) -> Iterator[Completion]:
        images, ready = [], []
        for i in indices:
            try:
                images.append([open_image(path) for path in requests[i].images])
                ready.append(i)
            except ValueError as err:
                yield Completion(i, None, error=str(err))
        if not ready:
            return
        try:
            yield from self._generate(requests, ready, images, sampling)
        except (RuntimeError, ValueError) as err:  # e.g. out of memory: fail this batch only
            for i in ready:
                yield Completion(i, None, error=f"generation failed: {err}")

    def _generate(self, requests, indices, images, sampling) -> Iterator[Completion]:
        import torch

        texts = self.processor.apply_chat_template(
            [requests[i].messages for i in indices], add_generation_prompt=True
        )
        inputs = self.processor(
            text=texts,
            images=images if any(images) else None,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=sampling.max_tokens,
                do_sample=sampling.temperature > 0,
                temperature=sampling.temperature if sampling.temperature > 0 else None,
                top_p=sampling.top_p if sampling.temperature > 0 else None,
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        pad = self.processor.tokenizer.pad_token_id
        for row, i in enumerate(indices):
            tokens = [t for t in new[row].tolist() if t != pad]
            text = self.processor.decode(tokens, skip_special_tokens=True)
            # A token limit can cut a character in half: drop the partial bytes, as vLLM does.
            text = text.rstrip("\ufffd").strip()
            yield Completion(i, text, None, int(prompt_tokens[row]), len(tokens))

    def close(self) -> None:
        self.model = None


def _length(request: Request) -> int:
    return sum(
        len(part.get("text") or "") if isinstance(part, dict) else len(part)
        for message in request.messages
        for part in (
            message["content"] if isinstance(message["content"], list) else [message["content"]]
        )
    )
