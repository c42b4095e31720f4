"""Two CPU processes (torchrun, gloo) train one adapter: both ranks end with the same one."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from train_data import save_templated

from pipeline.serve import free_port

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from safetensors.torch import save_file

    def main():
        from trl import ModelConfig, SFTConfig
        from trainers.config import MacaroonTrainConfig
        from trainers.train import train

        data, model, out = sys.argv[1:4]
        model_args = ModelConfig(model_name_or_path=model, use_peft=True, lora_r=16,
                                 lora_alpha=16, lora_dropout=0.1,
                                 lora_target_modules=["q_proj", "k_proj", "v_proj"])
        args = SFTConfig(output_dir=out, max_steps=3, per_device_train_batch_size=2,
                         bf16=False, use_cpu=True, report_to=[], save_steps=3,
                         gradient_checkpointing=False, max_length=None, learning_rate=1e-3)
        trainer = train(MacaroonTrainConfig(method="crl", data=data), model_args, args)
        weights = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters()
                   if p.requires_grad}
        save_file(weights, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))

    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.slow
def test_two_processes_train_the_same_adapter(tiny_model, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    data = save_templated(tmp_path / "data", image_names=range(1, 3))
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    run = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(script),
         str(data), str(tiny_model("llava")), str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = load_file(out / "adapter_model.safetensors")
    assert len(saved) == len(rank0)
    for name, tensor in rank0.items():
        assert torch.equal(saved[name.replace(".default", "")], tensor)
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if "lora_B" in k)  # it trained
    for folder in (out, out / "checkpoint-3"):  # written once, whole, by one process
        assert json.loads((folder / "macaroon.json").read_text())["steps"] == 3
        assert not list(folder.glob("*.partial"))
