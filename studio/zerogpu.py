"""ZeroGPU, the Hugging Face Space hardware that lends a GPU per call: chat and generation run under `@spaces.GPU`, long jobs are refused.

On ZeroGPU the platform sets SPACES_ZERO_GPU=true and provides the `spaces` package. A function decorated with
`spaces.GPU(duration=…)` gets a GPU for at most `duration` seconds per call, in a forked worker that receives its
arguments pickled. One chat turn (or one batch of a pool) fits in that; a training run, a sweep or an evaluation
takes minutes to hours and would be cut off, so they are refused with a message instead. Everywhere else (no
SPACES_ZERO_GPU, no `spaces`) `gpu()` returns the function unchanged and nothing is refused.

`spaces` has to be imported before torch initialises CUDA, and its decorator has to wrap functions at import time
(it registers them before the app launches): app.py imports this module first, and studio/chat.py decorates at
module level.
"""

from __future__ import annotations

import os

from .errors import StudioError

GPU_SECONDS = 60  # per call; ZeroGPU's default, and a shorter request waits less in its queue
CPU_JOBS = ("export", "push")  # jobs that never touch the GPU: they run beside a ZeroGPU chat as anywhere else


class NeedsDedicatedGPU(StudioError):
    """Work that ZeroGPU's time-boxed calls cannot hold: it needs a Space with dedicated GPU hardware."""


def _load_spaces():
    # The same test as the spaces package's own (spaces.config): "1", "t" or "true", in any case.
    if os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("1", "t", "true"):
        return None
    try:
        import spaces
    except ImportError:
        return None
    return spaces


_spaces = _load_spaces()
ACTIVE = _spaces is not None  # decided once, at import: decorators are applied then too


def gpu(duration: int = GPU_SECONDS):
    """Decorator for a module-level function that needs the GPU: `spaces.GPU(duration=…)` on ZeroGPU, else nothing.

    Its arguments and results cross a process boundary there, so they must pickle (no locks, no models).
    """
    if _spaces is None:
        return lambda fn: fn
    return _spaces.GPU(duration=duration)


def check_job(kind: str, title: str = "") -> None:
    """Refuse a long job on ZeroGPU (NeedsDedicatedGPU), before it takes the slot or writes anything."""
    if not ACTIVE or kind in CPU_JOBS:
        return
    what, one = {"train": ("Training", "a training run"), "sweep": ("A sweep", "a sweep"),
                 "evaluate": ("Evaluation", "an evaluation"), "grid": ("A probe grid", "a probe grid")}.get(
        kind, (f"This job ({title or kind})", "a long job"))
    raise NeedsDedicatedGPU(
        f"{what} needs dedicated GPU hardware. This Space runs on ZeroGPU, which lends a GPU for at most "
        f"{GPU_SECONDS} s per call: enough for a chat turn, not for {one}, which would be cut off. "
        "Duplicate the Space and choose a GPU in its Settings → Hardware (t4-small suits the default model), "
        "or run the studio on your own machine. Chat and reading runs work here."
    )


def describe() -> str | None:
    """One line for the app's header on ZeroGPU; None elsewhere."""
    if not ACTIVE:
        return None
    return ("This Space runs on **ZeroGPU**: chat borrows a GPU for each answer. Training, sweeps and evaluations "
            "need dedicated GPU hardware (duplicate the Space and pick a GPU), so Start is refused here.")
