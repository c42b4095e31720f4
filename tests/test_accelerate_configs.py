"""configs/accelerate/: each launch config, read by accelerate's own launcher code.

A multi-GPU run cannot start here, so these tests go as far as accelerate goes before
starting processes: `accelerate launch` reads the config and turns it into the environment
of the training processes, and those processes build their DeepSpeed or FSDP plugin from it.
The tests build the same plugins from the same environment and check what they hold.
"""

from types import SimpleNamespace

import pytest
from accelerate.commands.config import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    patch_environment,
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
)
from conftest import REPO

from pipeline.tiny_model import ARCHS

CONFIGS = REPO / "configs" / "accelerate"
EXPECTED = {
    "ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "zero2.yaml": DistributedType.DEEPSPEED,
    "zero3.yaml": DistributedType.DEEPSPEED,
    # DDP's launcher (torchrun) on CPU: run by tests/test_distributed.py, on two "machines".
    "ddp_cpu.yaml": DistributedType.MULTI_GPU,
}
GPU_CONFIGS = sorted(set(EXPECTED) - {"ddp_cpu.yaml"})


def launch_env(name: str, options: list[str] = ()) -> dict[str, str]:
    """The environment `accelerate launch --config_file NAME [OPTIONS] -m commands.cli train`
    gives the training processes."""
    return launch(name, options)[1]


def launch(name: str, options: list[str] = ()) -> tuple:
    """(args, environment) of that launch, args as accelerate hands them to torchrun."""
    argv = ["--config_file", str(CONFIGS / name), *options, "-m", "commands.cli", "train"]
    args, defaults, mixed_precision_from_config = _validate_launch_command(
        launch_command_parser().parse_args(argv)
    )
    if args.use_deepspeed:
        # As launch_command does before it hands over to the DeepSpeed launcher.
        fields = list(defaults.deepspeed_config)
        fields += ["mixed_precision"] if mixed_precision_from_config else []
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def test_every_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_config_launches_one_machine_in_bf16(name):
    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type == EXPECTED[name]
    assert config.mixed_precision == "bf16"
    assert (config.num_machines, config.machine_rank, config.use_cpu) == (1, 0, False)
    assert config.num_processes > 1
    env = launch_env(name)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env.get("ACCELERATE_USE_DEEPSPEED") == (
        "true" if EXPECTED[name] == DistributedType.DEEPSPEED else None
    )
    assert env.get("ACCELERATE_USE_FSDP") == (
        "true" if EXPECTED[name] == DistributedType.FSDP else None
    )


def test_cpu_config_is_two_machines_of_one_process_in_float32():
    config = load_config_from_file(str(CONFIGS / "ddp_cpu.yaml"))
    assert (config.num_machines, config.num_processes, config.mixed_precision) == (2, 2, "no")
    # use_cpu would take accelerate's single-process launcher: the Trainer's --use_cpu does it.
    assert not config.use_cpu
    env = launch_env("ddp_cpu.yaml", ["--machine_rank", "1", "--main_process_ip", "10.0.0.1"])
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_the_multi_node_recipe_starts_each_machines_share(name):
    """README: the same line on every machine, only --machine_rank differs."""
    options = ["--num_machines", "2", "--num_processes", "16", "--machine_rank", "1",
               "--main_process_ip", "10.0.0.1", "--main_process_port", "29500"]  # fmt: skip
    args, _ = launch(name, options)
    # What torchrun is given: 8 processes here, as node 1 of 2, meeting at the head.
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_endpoint == "10.0.0.1:29500"
    if args.use_deepspeed:  # torchrun on each machine, not DeepSpeed's ssh launcher
        assert args.deepspeed_multinode_launcher == "standard"


def deepspeed_plugin(name: str) -> DeepSpeedPlugin:
    env = launch_env(name)
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    return plugin


def test_zero2_shards_optimizer_state_and_gradients_on_the_gpus():
    plugin = deepspeed_plugin("zero2.yaml")
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == zero["stage"] == 2
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
    assert plugin.deepspeed_config["bf16"] == {"enabled": True}
    # Trainer and DeepSpeed agree on batch sizes only if the config leaves them to the Trainer.
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"


def test_zero3_shards_parameters_from_loading_and_saves_whole_weights():
    plugin = deepspeed_plugin("zero3.yaml")
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == zero["stage"] == 3
    # Loading partitioned: a model that fits no single GPU never lands whole on one.
    assert plugin.zero3_init_flag
    # Without it the final save holds no usable weights (the Trainer falls back to a
    # DeepSpeed checkpoint that needs zero_to_fp32.py).
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin.deepspeed_config["bf16"] == {"enabled": True}


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    with patch_environment(**launch_env("fsdp.yaml")):
        return FullyShardedDataParallelPlugin()


def test_fsdp_shards_fully_and_saves_the_adapter_whole():
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = fsdp_plugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.cpu_ram_efficient_loading
    # Trainer.save_model writes the adapter only when the state dict is gathered whole.
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    # Left to `macaroon train`, which names the classes each model has.
    assert plugin.transformer_cls_names_to_wrap is None


def fsdp_accelerator(plugin: FullyShardedDataParallelPlugin) -> SimpleNamespace:
    """What `name_fsdp_layers` reads of the Trainer's Accelerator: its state's FSDP plugin."""
    return SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize("arch", ARCHS)
def test_fsdp_wraps_every_decoder_layer_of_each_family(tiny_model, arch):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText
    from trl import ModelConfig

    from trainers.model import lora_config, name_fsdp_layers

    folder = tiny_model(arch)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    lora = lora_config(ModelConfig(model_name_or_path=str(folder)), None, model.config.model_type)
    model = get_peft_model(model, lora)  # as the Trainer gets it
    plugin = fsdp_plugin()
    name_fsdp_layers(fsdp_accelerator(plugin), model)
    # accelerate's own choice of modules, as when it prepares the model under FSDP2.
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    decoder_layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert decoder_layers and all(policy(m) for m in decoder_layers)


def test_fsdp_wraps_the_classes_a_launch_line_names():
    from trainers.model import name_fsdp_layers

    extra = ["--fsdp_transformer_layer_cls_to_wrap", "MistralDecoderLayer,CLIPEncoderLayer"]
    with patch_environment(**launch_env("fsdp.yaml", extra)):
        plugin = FullyShardedDataParallelPlugin()
    name_fsdp_layers(fsdp_accelerator(plugin), model=None)
    assert plugin.transformer_cls_names_to_wrap == ["MistralDecoderLayer", "CLIPEncoderLayer"]


def test_the_readme_launches_configs_that_exist():
    readme = (REPO / "README.md").read_text()
    named = {line.split("configs/accelerate/")[1].split()[0] for line in readme.splitlines()
             if "--config_file configs/accelerate/" in line}  # fmt: skip
    assert named and named <= set(EXPECTED)
