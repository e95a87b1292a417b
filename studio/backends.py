"""Which library trains a run: Unsloth or transformers + PEFT, chosen per run, and Unsloth's early import.

    from studio.backends import choose_backend, early_import
    early_import("auto")                                   # first thing in a process that may train with Unsloth
    backend, why = choose_backend("auto", detect_hardware(), planned_steps=43)

Unsloth patches transformers, PEFT and TRL when it is imported, and warns that it "should be imported
before transformers, peft" or the run "may run slower": so a process that may train with it imports
it before anything else loads those libraries (`early_import`). Then each run picks its backend
(`choose_backend`): `auto` takes Unsloth where it is installed on CUDA, unless the run is too short
for Unsloth's start-up cost to pay off.

Measured on one H200 (../shared/gpu/README.md, 2026-11-28; random-weight SmolLM2 shapes, s/step median
after warm-up), transformers+PEFT -> Unsloth:
    135M LoRA 0.60 -> 0.34;  135M QLoRA 0.68 -> 0.50;  1.7B LoRA preset 0.73 -> 0.53;  1.7B bs 32 0.53 -> 0.27
and Unsloth's patching and compiling cost about 40 s a process (24 steps of the 1.7B preset: 80 s wall
with Unsloth, 44 s without). Unsloth pays off after compile / gain steps: with the smallest gain measured
(0.18 s a step, 135M QLoRA) that is 40 / 0.18 = 223 steps. Bigger models gain more a step, so for them
the rule is conservative: Unsloth would pay off sooner.
"""

from __future__ import annotations

import importlib.util
import math
import sys

from .errors import ConfigError

BACKENDS = ("auto", "unsloth", "transformers")
UNSLOTH_START_S = 40.0  # Unsloth's patching + compiling, per process (measured, H200)
UNSLOTH_MIN_GAIN_S = 0.18  # the smallest per-step saving measured (135M QLoRA: 0.68 -> 0.50 s)
UNSLOTH_MIN_STEPS = math.ceil(UNSLOTH_START_S / UNSLOTH_MIN_GAIN_S)  # 223: shorter runs finish sooner without it


# Seen on an H200 (2026-12-04, docs/gpu.md): after `import unsloth`, transformers+PEFT LoRA runs left weights on
# the CPU and QLoRA runs were refused as "purely quantized"; Unsloth's patches are process-wide.
UNSLOTH_LOADED = ("backend transformers cannot train in this process: it has already loaded Unsloth, whose patches "
                  "to transformers, PEFT and TRL break a transformers+PEFT run. Use backend auto or unsloth here, "
                  "or train from the command line with --set backend=transformers (which then never loads Unsloth).")


def choose_backend(requested: str, hw, planned_steps: int | None = None,
                   unsloth_loaded: bool | None = None) -> tuple[str, str]:
    """("unsloth" | "transformers", why) for one run.

    `requested`: the run's backend setting. `hw`: a studio.config.Hardware (cuda, unsloth). `planned_steps`:
    the optimizer steps the run will take (None = unknown, treated as long). `unsloth_loaded`: whether this
    process has imported Unsloth (default: look); its patches stay for every later run in the process, so
    then auto means Unsloth and an explicit transformers is refused. An explicit "unsloth" that this
    machine cannot run is refused with the reason.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if unsloth_loaded is None:
        unsloth_loaded = "unsloth" in sys.modules
    if unsloth_loaded and requested == "transformers":
        raise ConfigError(UNSLOTH_LOADED)
    if requested == "transformers":
        return "transformers", "backend transformers was asked for"
    if not hw.cuda or not hw.unsloth:
        missing = "no CUDA GPU" if not hw.cuda else "the unsloth package is not installed"
        if requested == "unsloth":
            raise ConfigError(f"backend unsloth needs a CUDA GPU with the unsloth package, and here there is {missing}. "
                              "Use backend auto or transformers, or install requirements-gpu.txt on a CUDA machine.")
        return "transformers", f"Unsloth is unavailable here ({missing})"
    if requested == "unsloth":
        return "unsloth", "backend unsloth was asked for"
    if unsloth_loaded:
        return "unsloth", ("Unsloth is already loaded in this process, and its patches break a transformers+PEFT "
                           "run here")
    if planned_steps is not None and planned_steps < UNSLOTH_MIN_STEPS:
        return "transformers", (f"{planned_steps} steps is too short for Unsloth: its ~{UNSLOTH_START_S:.0f} s start-up "
                                f"pays off after ~{UNSLOTH_MIN_STEPS} steps (it saves 0.18-0.26 s a step, measured)")
    return "unsloth", (f"Unsloth on CUDA: 1.4-2x faster a step and less memory (measured); "
                       f"{'a long run' if planned_steps is None else f'{planned_steps} steps'} repays its "
                       f"~{UNSLOTH_START_S:.0f} s start-up")


def planned_steps(max_steps: int, num_train_epochs: float, train_pairs: int, effective_batch: int) -> int:
    """The optimizer steps a run will take, as the Trainer counts them (max_steps > 0 wins over epochs)."""
    if max_steps and max_steps > 0:
        return max_steps
    return max(1, math.ceil(math.ceil(train_pairs / max(1, effective_batch)) * num_train_epochs))


def early_import(requested: str = "auto", planned_steps: int | None = None) -> tuple[bool, str]:
    """Import Unsloth now, before transformers / PEFT / TRL, when this process may train with it.

    Call it first thing in a process that trains (the CLI's train and sweep, the web app). A cheap no-op
    (no torch import) when the backend is forced to transformers, the run is known to be short, or
    unsloth is not installed. Returns (imported, why) for the log.
    """
    if (requested or "auto").lower() == "transformers":
        return False, "backend transformers was asked for"
    if planned_steps is not None and (requested or "auto").lower() == "auto" and planned_steps < UNSLOTH_MIN_STEPS:
        return False, f"a {planned_steps}-step run is too short for Unsloth"
    if "unsloth" in sys.modules:
        return True, "unsloth was already imported"
    if importlib.util.find_spec("unsloth") is None:  # find_spec reads the path only: nothing is imported
        return False, "unsloth is not installed"
    import torch  # unsloth needs it anyway; it refuses to import without a GPU

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    late = [m for m in ("transformers", "peft", "trl") if m in sys.modules]
    try:
        import unsloth  # noqa: F401 - imported for its patches
    except Exception as e:  # noqa: BLE001 - a broken Unsloth must not stop transformers+PEFT from training
        return False, f"unsloth failed to import ({type(e).__name__}: {e}); training uses transformers+PEFT"
    if late:
        return True, f"imported, but after {', '.join(late)}: some of Unsloth's patches may not apply"
    return True, "imported before transformers and PEFT"
