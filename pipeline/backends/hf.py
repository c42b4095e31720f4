"""`hf` backend: transformers `AutoModelForImageTextToText`, left padding, real batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipeline.backends import Completion, Request, Sampling
from pipeline.chat import prompt_special_tokens, prompt_text, stop_token_ids
from pipeline.families.image_tokens import processor_kwargs
from pipeline.images import open_image
from pipeline.model_source import model_errors


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
        max_image_tokens: int | None = None,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_id, self.batch_size = model, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":  # bf16 where the hardware has it; float32 on CPU for exactness
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        common = dict(revision=revision, trust_remote_code=trust_remote_code)
        with model_errors(model):  # a model that is not there is named as such
            limits = processor_kwargs(model, max_image_tokens, revision)
            self.processor = AutoProcessor.from_pretrained(model, **common, **limits)
            self.model = AutoModelForImageTextToText.from_pretrained(
                model, dtype=getattr(torch, dtype), **common
            ).to(self.device)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batching needs it
        self.model.eval()
        self._ids_only_generation_config()

    def attach_adapter(self, adapter: str, record: dict | None, limits: dict) -> None:
        """Run the PEFT adapter in `adapter` on this base model (`limits`: the processor's
        image-token cap). An adapter trained with new reward tokens brings its tokenizer,
        and the base gets rows for them."""
        from peft import PeftModel
        from transformers import AutoProcessor

        if record and record.get("reward_special_tokens"):
            self.processor = AutoProcessor.from_pretrained(adapter, **limits)
            self.processor.tokenizer.padding_side = "left"
            self.model.resize_token_embeddings(len(self.processor.tokenizer))
        from pipeline.model_source import model_errors

        with model_errors(adapter, "--adapter"):  # a missing or foreign adapter, named
            self.model = PeftModel.from_pretrained(self.model, adapter).eval()

    def _ids_only_generation_config(self) -> None:
        """Keep the model's stop and pad ids, drop its sampling defaults.

        transformers fills every setting a call leaves unset from the model's
        generation_config (Qwen2-VL's top_k 1, Gemma 3's top_k 64): with only the ids kept,
        the request's Sampling decides everything.
        """
        from transformers import GenerationConfig

        tokenizer = self.processor.tokenizer
        published = self.model.generation_config
        self.stop_ids = stop_token_ids(tokenizer, published)
        pad = published.pad_token_id if published.pad_token_id is not None else None
        self.pad_id = tokenizer.pad_token_id if pad is None else pad
        if self.pad_id is None:
            self.pad_id = self.stop_ids[0]
        self.model.generation_config = GenerationConfig(
            bos_token_id=published.bos_token_id,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            decoder_start_token_id=published.decoder_start_token_id,
        )

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

    def encode(self, requests: Sequence[Request], images: list[list] | None = None):
        """The model inputs for `requests`, as generate() builds them (prompt ids included)."""
        texts = [prompt_text(self.processor, r.messages) for r in requests]
        if images is None:
            images = [[open_image(path) for path in r.images] for r in requests]
        special = {prompt_special_tokens(self.processor.tokenizer, t) for t in texts}
        if len(special) > 1:  # one template renders every prompt alike; never expected
            raise ValueError("prompts disagree on whether they start with BOS")
        return self.processor(
            text=texts,
            images=images if any(images) else None,
            padding=True,
            return_tensors="pt",
            add_special_tokens=special.pop(),  # the rule of pipeline/chat.py
        ).to(self.device)

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

        inputs = self.encode([requests[i] for i in indices], images)
        torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **generation_kwargs(sampling))
        width = inputs["input_ids"].shape[1]
        for row, i in enumerate(indices):
            prompt = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
            tokens = out[row, width:].tolist()
            stopped = next((n for n, t in enumerate(tokens) if t in self.stop_ids), None)
            tokens = tokens if stopped is None else tokens[: stopped + 1]
            text = detokenize(self.processor.tokenizer, prompt, tokens).strip()
            reason = "stop" if stopped is not None else "length"
            yield Completion(i, text, None, len(prompt), len(tokens), reason)

    def close(self) -> None:
        self.model = None


def detokenize(tokenizer, prompt: list[int], tokens: list[int]) -> str:
    """The text of `tokens` as vLLM's detokenizer makes it, so both backends agree.

    Token by token through tokenizers' DecodeStream, primed with the prompt, special tokens
    skipped: a character still incomplete at the end (a token limit cut it) is left out,
    and a byte sequence that is not UTF-8 (random weights make them) comes out as vLLM
    writes it. A stream broken by such a sequence starts afresh, as vLLM's does.
    """
    from tokenizers.decoders import DecodeStream

    backend = tokenizer._tokenizer
    stream, pieces = DecodeStream(ids=prompt, skip_special_tokens=True), []
    for token in tokens:
        try:
            piece = stream.step(backend, token)
        except Exception:  # noqa: BLE001 - "invalid prefix": the stream's state is broken
            stream = DecodeStream(skip_special_tokens=True)
            piece = stream.step(backend, token)
        pieces.append(piece or "")
    return "".join(pieces)


def generation_kwargs(sampling: Sampling) -> dict:
    """`generate()` settings that say everything: nothing is left to model defaults."""
    sample = sampling.temperature > 0
    return dict(
        max_new_tokens=sampling.max_tokens,
        do_sample=sample,
        temperature=sampling.temperature if sample else 1.0,
        top_p=sampling.top_p if sample else 1.0,
        top_k=sampling.top_k if sample else 0,  # 0: off (transformers' own default is 50)
        min_p=sampling.min_p if sample and sampling.min_p > 0 else None,
        repetition_penalty=sampling.repetition_penalty,
        num_beams=1,
    )


def _length(request: Request) -> int:
    return sum(
        len(part.get("text") or "") if isinstance(part, dict) else len(part)
        for message in request.messages
        for part in (
            message["content"] if isinstance(message["content"], list) else [message["content"]]
        )
    )
