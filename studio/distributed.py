"""One run across several processes (GPUs or nodes): which process this is, how the processes agree, and the
command that launches them.

    torchrun --standalone --nproc_per_node 4 -m studio train --preset X          # DDP through TRL + PEFT
    accelerate launch --config_file presets/accelerate/zero3.yaml --num_processes 4 -m studio train --preset X

Every process trains; only the main one (global rank 0) owns the run: it takes the job slot, claims the
run folder and writes config.yaml, status, metrics, snapshots and the adapter. The others learn the folder
from it (`from_main`), write nothing, and stop when it stops (`any_process`). The process group is set up
through accelerate's `PartialState`, which picks the backend (gloo on CPU, nccl on CUDA, DeepSpeed's or
FSDP's where the launcher asked) and which transformers' Trainer then reuses.

Rank, world size and launcher are read from the environment the launchers set, so asking costs no import.
"""

from __future__ import annotations

import os
import shlex
from datetime import timedelta
from pathlib import Path

from .config import detect_hardware, load_preset, preset_names
from .errors import ConfigError, StudioError

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_DIR = ROOT / "presets" / "accelerate"
# How several processes share the work: torchrun alone is plain DDP; the rest are accelerate config files.
STRATEGIES = {
    "torchrun": "DDP with torchrun: every GPU holds the whole model (no extra package)",
    "ddp": "DDP with accelerate launch",
    "zero2": "DeepSpeed ZeRO-2: optimizer state and gradients sharded (pip install deepspeed)",
    "zero3": "DeepSpeed ZeRO-3: the weights sharded too, for a model that does not fit one card",
    "fsdp": "PyTorch FSDP: the weights sharded, no extra package",
}
PG_TIMEOUT_S = 1800  # transformers' ddp_timeout default: how long a process waits for the others


# --- who am I ------------------------------------------------------------------------------------

def rank() -> int:
    """This process's global rank (0 when not launched as one of several)."""
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's rank on its node: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def launcher() -> str:
    """accelerate, torchrun, other (some launcher that sets WORLD_SIZE) or none."""
    # Every `accelerate launch` path sets ACCELERATE_MIXED_PRECISION for its children; it also runs torchrun
    # underneath (TORCHELASTIC_RUN_ID), so it is asked first.
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        return "accelerate"
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    return "other" if world_size() > 1 else "none"


def describe(trainer=None) -> dict:
    """What config.yaml records: world size and launcher, and with a trainer what accelerate itself set up
    (its process count is the proof that the processes really trained together)."""
    info = {"world_size": world_size(), "launcher": launcher()}
    if trainer is not None:
        state = trainer.accelerator.state
        info["accelerate"] = {"num_processes": state.num_processes, "process_index": state.process_index,
                              "distributed_type": str(getattr(state.distributed_type, "value", state.distributed_type)),
                              "backend": state.backend}
    return info


# --- agreeing ------------------------------------------------------------------------------------

def _process_group():
    """accelerate's PartialState: it starts the process group once, with the backend for this hardware."""

    from accelerate import PartialState

    # cpu=True on a machine without CUDA: otherwise accelerate (and the Trainer) would see no distributed setup
    # at all and every process would train alone on all the data.
    return PartialState(cpu=not detect_hardware().cuda, timeout=timedelta(seconds=PG_TIMEOUT_S))


def from_main(work):
    """`work()` run by the main process only; every process returns its result, or raises its StudioError.

    The run folder is claimed this way (so all processes write to, and read from, the same one), and the
    batch size fitted to the card (so every process takes the same number of steps).
    """
    if world_size() <= 1:
        return work()
    from accelerate.utils import broadcast_object_list

    _process_group()
    box, failure = [None], None
    if is_main():
        try:
            box = [("ok", work())]
        except BaseException as e:  # noqa: BLE001 - the others must hear of it, or they wait forever
            failure = e
            told = e if isinstance(e, StudioError) else StudioError(f"the main process failed: {type(e).__name__}: {e}")
            box = [("error", told)]
    broadcast_object_list(box, from_process=0)
    if failure is not None:
        raise failure
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a stop, a failure): they leave the loop at the same step."""
    if world_size() <= 1:
        return flag
    import torch
    import torch.distributed as dist

    state = _process_group()
    t = torch.tensor([1.0 if flag else 0.0], device=state.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sharded(trainer) -> bool:
    """True when each process holds only a shard of the weights (DeepSpeed ZeRO-3, FSDP)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    if getattr(trainer, "is_deepspeed_enabled", False):
        return trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def for_saving(trainer, model):
    """(model, state_dict) to save the adapter from: the weights gathered where they are sharded, else
    (model, None). Where sharded this is a collective: every process must call it, at the same step."""
    if trainer is None or not sharded(trainer):
        return model, None
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # the full weights, on the main process
    return trainer.accelerator.unwrap_model(model), state


# --- the command ---------------------------------------------------------------------------------

def launch_command(cfg, processes: int, preset: str | None = None, strategy: str = "torchrun",
                   home: str | Path | None = None, nodes: int = 1) -> str:
    """The shell command that trains `cfg` on `processes` GPUs a node, headless, into the same STUDIO_HOME.

    The settings travel as `--preset` plus one `--set` for each that differs from the preset, so the command
    is self-contained (no file written) and reads back, through the CLI, as exactly `cfg`.
    """

    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"the number of GPUs must be a whole number of at least 1, got {processes!r}")
    if not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"the number of nodes must be a whole number of at least 1, got {nodes!r}")
    if cfg.method == "qlora" and strategy in ("zero3", "fsdp"):
        raise ConfigError(f"QLoRA with {strategy} needs the 4-bit weights stored as bf16 (bnb_4bit_quant_storage), "
                          "which the studio does not set: use torchrun, ddp or zero2 with QLoRA, or method lora.")
    preset = preset if preset in preset_names() else "cpu-quickstart"
    base = load_preset(preset).config.to_dict()
    flags = [f"--preset {shlex.quote(preset)}"]
    for key, value in cfg.to_dict().items():
        if value != base[key]:
            flags.append(f"--set {shlex.quote(f'{key}={_flag_value(value)}')}")
    if strategy == "torchrun":
        head = f"torchrun --nproc_per_node {processes}"
        # --standalone: a free local port, so two jobs on one machine never collide; across nodes, run the
        # same command on each with MAIN_HOST set to the first node's address.
        head += " --standalone" if nodes == 1 else (f" --nnodes {nodes} --rdzv_id studio --rdzv_backend c10d "
                                                    "--rdzv_endpoint $MAIN_HOST:29500")
    else:
        head = (f"accelerate launch --config_file presets/accelerate/{strategy}.yaml "
                f"--num_processes {processes * nodes}")
        if nodes > 1:
            head += (f" --num_machines {nodes} --machine_rank $NODE_RANK --main_process_ip $MAIN_HOST"
                     " --main_process_port 29500")
    env = f"cd {shlex.quote(str(ROOT))} && STUDIO_HOME={shlex.quote(str(home))} " if home else ""
    return f"{env}{head} -m studio train " + " ".join(flags)


def _flag_value(value) -> str:
    """A setting as `--set` reads it back (studio.config.coerce): lists comma-joined, None as none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_flag_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)
