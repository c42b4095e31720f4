"""Two machines' worth of training, on one host: `accelerate launch` with the CPU variant of
the DDP config (configs/accelerate/ddp_cpu.yaml), once per machine rank, as the README's
multi-node recipe runs it. Both ranks (gloo) end with the same adapter."""

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

from pipeline import REPO_ROOT
from pipeline.serve import free_port

CONFIG = REPO_ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"

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
def test_two_machines_train_the_same_adapter(tiny_model, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    data = save_templated(tmp_path / "data", image_names=range(1, 3))
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out, port = tmp_path / "out", str(free_port())
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    machines = []
    for rank in (0, 1):  # the command each machine runs; here both on 127.0.0.1
        argv = [accelerate, "launch", "--config_file", str(CONFIG), "--machine_rank", str(rank),
                "--main_process_ip", "127.0.0.1", "--main_process_port", port, str(script),
                str(data), str(tiny_model("llava")), str(out)]  # fmt: skip
        machines.append(
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
        )
    for machine in machines:
        log = machine.communicate(timeout=600)[0]
        assert machine.returncode == 0, log[-4000:]
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
