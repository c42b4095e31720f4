"""METHOD=grpo rollouts on vLLM where TRL's own sync fails: the policy's adapter as a LoRA.

TRL's colocated vLLM engine copies the whole policy's weights into vLLM every step, and
for the families here that copy fails on CPU (docs/DESIGN.md §7). Our adapters adapt the
language model only, and vLLM applies them as saved (pipeline/backends/lora.py). So each
step the current adapter is saved to a folder and handed to one engine on the base
weights as a new `LoRARequest`; the engine samples the group's answers, and TRL scores and
trains on them as on its own.

The engine gets each prompt as our backends render it (pipeline/chat.py) with its images,
not TRL's prompt tokens: those hold the image placeholders already expanded by the
processor, and vLLM 0.32 expands every placeholder of a token prompt again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.backends.lora import ServedAdapter, adapted_modules, lora_rank


class LoraRollouts:
    """A vLLM engine on `base` that samples with the policy's adapter of the current step."""

    def __init__(self, base: str, folder: Path, max_model_len: int | None = None):
        self.base, self.folder, self.max_model_len = base, Path(folder), max_model_len
        self.engine, self.step, self.request = None, None, None

    def generate(self, model, step: int, conversations, images, sampling) -> list[list[int]]:
        """Sampled completion token ids per conversation (TRL repeats each per group), by
        the policy `model`'s adapter at `step`; `images`: a list of images per prompt."""
        from pipeline.chat import prompt_text

        if step != self.step:
            self._load(model, step)
        prompts = []
        for messages, pictures in zip(conversations, images or [None] * len(conversations),
                                      strict=True):  # fmt: skip
            prompt = {"prompt": prompt_text(self.engine.processor, messages)}
            if pictures:
                prompt["multi_modal_data"] = {"image": pictures}
            prompts.append(prompt)
        outputs = self.engine._run(prompts, [sampling] * len(prompts), self.request)
        return [list(output.outputs[0].token_ids) for output in outputs]

    def _load(self, model, step: int) -> None:
        from vllm.lora.request import LoRARequest

        folder = self.folder / f"step-{step}"
        model.save_pretrained(folder)  # the PEFT adapter alone: what vLLM loads as a LoRA
        if self.engine is None:
            self.engine = _engine(self.base, folder, self.max_model_len)
        if self.step is not None:  # the last step's adapter is no longer asked for
            shutil.rmtree(self.folder / f"step-{self.step}", ignore_errors=True)
        # A new id per step: vLLM caches a LoRA by its id.
        self.request = LoRARequest(f"step-{step}", step + 1, str(folder))
        self.step = step

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def _engine(base: str, adapter: Path, max_model_len: int | None):
    import json

    from pipeline.backends.vllm_engine import VLLMBackend

    config = json.loads((adapter / "adapter_config.json").read_text())
    served = ServedAdapter("policy", str(adapter), base, rank=lora_rank(config),
                           modules=adapted_modules(config))  # fmt: skip
    # Every step's adapter is a new LoRA: room for two while the old one is dropped.
    return VLLMBackend(base, max_model_len=max_model_len, adapters=[served],
                       engine_kwargs={"max_cpu_loras": 2})  # fmt: skip


def sampling_params(trainer):
    """TRL's sampling settings for its rollouts, as vLLM takes them."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=trainer.temperature, top_p=trainer.top_p,
        top_k=trainer.top_k if trainer.top_k else 0, min_p=trainer.min_p or 0.0,
        repetition_penalty=trainer.repetition_penalty,
        max_tokens=trainer.max_completion_length,
    )  # fmt: skip


def lora_grpo_trainer(rollouts: LoraRollouts):
    """TRL's GRPOTrainer whose rollouts `rollouts` samples (see the module docstring)."""
    from trl import GRPOTrainer

    class LoraRolloutGRPOTrainer(GRPOTrainer):
        def _tokenize_prompts(self, prompts: list):
            self._conversations = prompts  # what the engine renders itself
            return super()._tokenize_prompts(prompts)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):  # fmt: skip
            model = self.accelerator.unwrap_model(self.model)
            ids = rollouts.generate(
                model, self.state.global_step, self._conversations, images, sampling_params(self)
            )
            return ids, None  # no sampling logprobs: TRL computes them as for hf rollouts

    return LoraRolloutGRPOTrainer
