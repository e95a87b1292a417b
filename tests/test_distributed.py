"""One run across several processes: a real two-process DDP job (torchrun, gloo on CPU) leaves one complete run
folder written by the main process only; the accelerate presets parse; the launch command reads back exactly."""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest
import yaml

from studio import distributed, jobs
from studio.config import load_preset
from studio.errors import ConfigError, JobBusy

ROOT = Path(__file__).resolve().parent.parent
STEPS = 2


@pytest.mark.slow
@pytest.mark.subprocess
def test_torchrun_two_processes_train_one_run_written_once(studio_home, style_pairs):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "ACCELERATE_MIXED_PRECISION")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "studio", "train", "--preset", "cpu-quickstart", "--data", str(style_pairs), "--quiet",
               "--set", f"max_steps={STEPS}", "--set", "max_length=48", "--set", "per_device_train_batch_size=1",
               "--set", "eval_fraction=0.25", "--set", "eval_steps=0", "--set", "save_steps=0",
               "--set", "lora_r=4", "--set", "lora_target_modules=q_proj,v_proj"]
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.time() - started
    assert done.returncode == 0, done.stderr[-4000:]

    runs = [p for p in (studio_home / "runs").iterdir()]
    assert len(runs) == 1, runs  # the second process used the main one's folder, it did not claim its own
    run = runs[0]
    raw = yaml.safe_load((run / "config.yaml").read_text())
    info = raw["_run"]
    # What accelerate itself set up, not only the launcher's environment: two processes in one gloo group.
    assert info["world_size"] == 2 and info["launcher"] == "torchrun"
    assert info["accelerate"] == {"num_processes": 2, "process_index": 0, "distributed_type": "MULTI_CPU",
                                  "backend": "gloo"}
    assert raw["max_steps"] == STEPS

    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == STEPS and status["error"] is None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))  # each step logged once, not twice
    assert len([r for r in rows if "train_runtime" in r]) == 1
    assert len([r for r in rows if "eval_loss" in r]) == 1  # the held-out evaluation ran across both processes
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    assert not (run / "error.log").exists() and not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    assert done.stdout.count("done: ") == 1, done.stdout  # one report, from the main process
    assert jobs.holder() is None  # the slot was the main process's, and it let it go
    print(f"two-process torchrun run: {seconds:.1f} s wall")


def test_only_the_main_process_takes_the_job_slot(studio_home, monkeypatch):
    # Another process holds the slot (the flock); the main process of a new run must wait for it, the other
    # processes of that run must not (the main one holds it for them, or they would all deadlock).
    path = jobs.lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(JobBusy):
            jobs.Job("test", "main process", work=lambda job: None).start()
        monkeypatch.setenv("RANK", "1")
        job = jobs.Job("test", "second process", work=lambda job: 42).start()
        job.wait(10)
        assert job.state == "done" and job.result == 42
    finally:
        holder.kill()
        holder.wait()


def test_launcher_is_read_from_what_the_launchers_set(monkeypatch):
    for name in ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.describe() == {"world_size": 1, "launcher": "none"} and distributed.is_main()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert distributed.describe() == {"world_size": 4, "launcher": "torchrun"} and not distributed.is_main()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate launch runs torchrun underneath
    assert distributed.launcher() == "accelerate"


ACCELERATE_FILES = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}


@pytest.mark.parametrize("name", sorted(ACCELERATE_FILES))
def test_accelerate_presets_parse_and_use_only_options_accelerate_knows(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = ROOT / "presets" / "accelerate" / f"{name}.yaml"
    assert path.read_text().startswith("# "), "each file says first when to use it"
    config = load_config_from_file(str(path))  # accelerate's own reader: an unknown top-level key fails here
    assert config.distributed_type.value == ACCELERATE_FILES[name]
    assert config.mixed_precision == "no"  # the run's bf16 setting decides, not the file
    # `accelerate launch` turns deepspeed_config / fsdp_config keys into its own options; a misspelt one
    # would be silently ignored, so each must be an option of the launcher.
    options = {a.dest for a in launch_command_parser()._actions}
    nested = {**(config.deepspeed_config or {}), **(config.fsdp_config or {})}
    assert set(nested) <= options, set(nested) - options
    if name == "zero3":
        assert nested["zero_stage"] == 3 and nested["zero3_save_16bit_model"] is True
    if name == "zero2":
        assert nested["zero_stage"] == 2
    if name == "fsdp":  # the PEFT recipe: trainable and frozen weights in separate units, gathered whole to save
        assert nested["fsdp_use_orig_params"] is False and nested["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert nested["fsdp_sync_module_states"] is True


@pytest.mark.parametrize("strategy", sorted(distributed.STRATEGIES))
def test_the_launch_command_reads_back_as_the_same_settings(strategy, tmp_path):
    from studio.cli import _preset_config, build_parser

    cfg = load_preset("twin-style-cpu").config.replace(
        beta=0.25, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], lora_target_modules=["q_proj", "v_proj"],
        data=str(tmp_path / "my pairs.jsonl"), eval_data=None, learning_rate=3e-5, bf16=None, optim="adamw_torch")
    command = distributed.launch_command(cfg, 4, preset="twin-style-cpu", strategy=strategy, home=tmp_path / "home")
    words = shlex.split(command)
    assert words[words.index("STUDIO_HOME=" + str(tmp_path / "home")) + 1] == (
        "torchrun" if strategy == "torchrun" else "accelerate")
    if strategy != "torchrun":
        config_file = words[words.index("--config_file") + 1]
        assert (ROOT / config_file).is_file() and words[words.index("--num_processes") + 1] == "4"
    else:
        assert words[words.index("--nproc_per_node") + 1] == "4"
    args = build_parser().parse_args(words[words.index("studio") + 1:])
    preset, back = _preset_config(args)
    assert preset.name == "twin-style-cpu" and back == cfg


def test_the_launch_command_refuses_what_cannot_run():
    cfg = load_preset("cpu-quickstart").config
    with pytest.raises(ConfigError, match="QLoRA with zero3"):
        distributed.launch_command(cfg.replace(method="qlora"), 2, strategy="zero3")
    with pytest.raises(ConfigError, match="strategy must be one of"):
        distributed.launch_command(cfg, 2, strategy="horovod")
    with pytest.raises(ConfigError, match="at least 1"):
        distributed.launch_command(cfg, 0)
    two_nodes = distributed.launch_command(cfg, 8, nodes=2)
    assert "--nnodes 2" in two_nodes and "--standalone" not in two_nodes


def test_the_train_tab_shows_the_command_for_its_settings(studio_home):
    from studio.ui.form import widget_value
    from studio.ui.train_tab import TrainTab

    with gr.Blocks():
        tab = TrainTab()
    assert "torchrun --nproc_per_node 2 --standalone -m studio train --preset cpu-quickstart" in tab.command.value
    values = {k: widget_value(k, v) for k, v in tab.default_config.to_dict().items()}
    shown = tab.launch_command_for("cpu-quickstart", 8, 1, "zero3", **{**values, "beta": 0.3})
    assert "presets/accelerate/zero3.yaml --num_processes 8" in shown and "--set beta=0.3" in shown
    assert tab.launch_command_for("cpu-quickstart", 2, 1, "ddp", **{**values, "beta": -1}).startswith(
        "# fix the settings first: ")
