"""RunConfig: validated once, with messages that quote the bad value; presets load; hardware picks defaults."""

import pytest

from studio.config import (
    ConfigError, Hardware, RunConfig, apply_overrides, load_preset, preset_names, resolve_for_hardware,
)

CPU = Hardware(cuda=False, bf16=False, bitsandbytes=False, unsloth=False, device_name="CPU")
GPU = Hardware(cuda=True, bf16=True, bitsandbytes=True, unsloth=True, device_name="H100")


@pytest.mark.parametrize("changes, words", [
    ({"beta": 0}, "beta must be > 0, got 0"),
    ({"beta": -0.1}, "beta must be > 0"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"learning_rate": 0.5}, "far too high"),
    ({"lora_r": 0}, "lora_r must be > 0"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be > 0"),
    ({"max_length": 8}, "max_length must be at least 16"),
    ({"loss_type": "kto"}, "loss_type must be one of"),
    ({"method": "full"}, "method must be one of lora, qlora, got 'full'"),
    ({"eval_fraction": 1.5}, "eval_fraction must be in [0, 1)"),
    ({"max_steps": 0}, "max_steps must be -1"),
    ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
])
def test_invalid_values_are_refused_with_the_value_quoted(changes, words):
    with pytest.raises(ConfigError) as e:
        RunConfig(**changes)
    assert words in str(e.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        RunConfig(beta=0, lora_r=-1)
    assert "beta" in str(e.value) and "lora_r" in str(e.value)


def test_unknown_keys_are_an_error_not_ignored():
    with pytest.raises(ConfigError, match="Unknown key.*lerning_rate"):
        RunConfig.from_dict({"lerning_rate": 1e-5})


def test_yaml_style_strings_are_coerced_by_field_type():
    cfg = RunConfig.from_dict({"learning_rate": "2e-6", "lora_r": "32", "bf16": "false",
                               "lora_target_modules": "q_proj, v_proj", "optim": "none"})
    assert cfg.learning_rate == 2e-6 and cfg.lora_r == 32 and cfg.bf16 is False
    assert cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.optim is None


def test_overrides_from_the_command_line():
    cfg = apply_overrides(RunConfig(), ["beta=0.25", "max_steps=7", "lora_target_modules=q_proj,k_proj"])
    assert (cfg.beta, cfg.max_steps, cfg.lora_target_modules) == (0.25, 7, ["q_proj", "k_proj"])
    with pytest.raises(ConfigError, match="lora_r must be int, got 'abc'"):
        apply_overrides(RunConfig(), ["lora_r=abc"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(RunConfig(), ["beta"])


def test_cpu_defaults_are_fp32_without_checkpointing_or_8bit_adam():
    cfg = resolve_for_hardware(RunConfig(), CPU)
    assert cfg.bf16 is False and cfg.gradient_checkpointing is False and cfg.optim == "adamw_torch"


def test_gpu_defaults_use_bf16_checkpointing_and_8bit_adam():
    cfg = resolve_for_hardware(RunConfig(), GPU)
    assert cfg.bf16 is True and cfg.gradient_checkpointing is True and cfg.optim == "adamw_8bit"


def test_explicit_choices_win_over_hardware_defaults():
    cfg = resolve_for_hardware(RunConfig(gradient_checkpointing=True, optim="sgd"), CPU)
    assert cfg.gradient_checkpointing is True and cfg.optim == "sgd"


def test_qlora_on_cpu_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="QLoRA needs a CUDA GPU"):
        resolve_for_hardware(RunConfig(method="qlora"), CPU)
    assert resolve_for_hardware(RunConfig(method="qlora"), GPU).method == "qlora"


def test_8bit_adam_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="adamw_8bit needs a CUDA GPU"):
        resolve_for_hardware(RunConfig(optim="adamw_8bit"), CPU)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_its_data_exists(name):
    preset = load_preset(name)
    assert preset.card.get("title") and preset.card.get("time_cpu") and preset.card.get("memory")
    from pathlib import Path

    for path in (preset.config.data, preset.config.eval_data):
        if path:  # a shipped file, or a hub dataset id (owner/name)
            assert Path(path).is_file() or (path.count("/") == 1 and not Path(path).suffix), path


def test_required_presets_are_shipped():
    assert {"cpu-quickstart", "llm-twin-dpo"} <= set(preset_names())


def test_llm_twin_preset_is_the_handbook_recipe():
    c = load_preset("llm-twin-dpo").config
    assert c.model == "mlabonne/TwinLlama-3.1-8B" and c.data == "mlabonne/llmtwin-dpo"
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (32, 32, 0.0)
    assert set(c.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (c.beta, c.learning_rate, c.lr_scheduler_type, c.warmup_steps, c.num_train_epochs) == (0.5, 2e-6, "linear", 10, 1)
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps, c.optim, c.weight_decay) == (2, 8, "adamw_8bit", 0.01)
    assert (c.max_length, c.eval_fraction, c.seed, c.prompt_template) == (2048, 0.05, 0, "alpaca")


def test_llm_twin_preset_fails_early_and_clearly_on_cpu():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve_for_hardware(load_preset("llm-twin-dpo").config, CPU)


def test_the_declared_choices_are_exactly_what_the_pinned_trl_and_transformers_accept():
    """The choice lists are declared in config.py so that a process that never trains does not import trl; a pin
    bump that adds or drops a loss, schedule or optimizer fails here instead of refusing a valid setting."""
    import dataclasses
    import re

    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames
    from trl.trainer.dpo_config import DPOConfig

    from studio.config import COMMON_OPTIMIZERS, LOSS_TYPES, OPTIMIZERS, SCHEDULERS

    help_text = {f.name: f for f in dataclasses.fields(DPOConfig)}["loss_type"].metadata["help"]
    assert LOSS_TYPES == tuple(re.findall(r"`'(\w+)'`", help_text))
    assert SCHEDULERS == tuple(s.value for s in SchedulerType)
    assert set(OPTIMIZERS) == {o.value for o in OptimizerNames} and len(OPTIMIZERS) == len(set(OPTIMIZERS))
    assert OPTIMIZERS[:len(COMMON_OPTIMIZERS)] == COMMON_OPTIMIZERS
