"""Injected faults: whatever goes wrong mid-run, the run ends in a named state and no work is lost or poisoned."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from studio.runs import Run, get_run
from studio.training import TrainingJob

from helpers import At, quick_config, wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # every test trains


def poison(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.fill_(float("nan"))


def adapter_values(run: Run) -> torch.Tensor:
    from safetensors.torch import load_file

    return torch.cat([t.flatten() for t in load_file(run.adapter_dir / "adapter_model.safetensors").values()])


def test_a_nan_loss_fails_the_run_at_that_step_and_keeps_the_last_finite_snapshot(studio_home, style_pairs):
    job = TrainingJob(quick_config(style_pairs, max_steps=6, eval_fraction=0), callbacks=[At(2, poison)]).start()
    assert job.wait(300) == "failed"
    assert "NaN or infinite at step 2" in job.error or "became nan at step" in job.error, job.error
    status = Run(job.run.path).status()
    assert status["state"] == "failed" and "Traceback" not in status["error"]
    assert torch.isfinite(adapter_values(job.run)).all()  # the step-1 snapshot, not the poisoned weights
    assert job.last_snapshot == 1


def test_an_exception_inside_a_step_fails_the_run_and_keeps_the_trained_adapter(studio_home, style_pairs):
    def boom(model):
        raise RuntimeError("injected fault inside a step")

    job = TrainingJob(quick_config(style_pairs, max_steps=6, eval_fraction=0), callbacks=[At(3, boom)]).start()
    assert job.wait(300) == "failed"
    assert "injected fault" in job.error
    assert "Traceback" in (job.run.path / "error.log").read_text()
    assert job.run.has_adapter and job.last_snapshot == 3


def test_out_of_memory_in_a_step_says_what_to_lower(studio_home, style_pairs):
    def oom(model):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    job = TrainingJob(quick_config(style_pairs, max_steps=4, eval_fraction=0), callbacks=[At(1, oom)]).start()
    assert job.wait(300) == "failed"
    assert job.error.startswith("Out of memory") and "per_device_train_batch_size" in job.error


def test_a_run_folder_removed_mid_run_ends_the_run_and_is_not_recreated(studio_home, style_pairs):
    def remove(model):
        shutil.rmtree(job.run.path)

    job = TrainingJob(quick_config(style_pairs, max_steps=6, eval_fraction=0), callbacks=[At(2, remove)])
    job.start()
    assert job.wait(300) == "failed"
    assert "was removed" in job.error and not job.run.path.exists()


def test_stop_while_loading_saves_no_adapter_and_says_so(studio_home, style_pairs):
    job = TrainingJob(quick_config(style_pairs, max_steps=6, eval_fraction=0))
    job.start()
    job.stop()  # before the model has loaded
    assert job.wait(300) == "stopped"
    assert job.step == 0 and not job.run.has_adapter
    assert Run(job.run.path).status()["phase"] == "stopped before training began"


def test_a_run_that_reaches_its_last_step_while_stop_is_pressed_is_done(studio_home, style_pairs):
    job = TrainingJob(quick_config(style_pairs, max_steps=2, eval_fraction=0),
                      callbacks=[At(2, lambda model: job.stop())]).start()
    assert job.wait(300) == "done" and job.step == 2 and job.run.has_adapter


def test_a_snapshot_exists_after_the_first_step_so_a_killed_run_keeps_one(studio_home, style_pairs):
    job = TrainingJob(quick_config(style_pairs, max_steps=50, eval_fraction=0, save_steps=25)).start()
    try:
        assert wait_for(lambda: job.step >= 2, 300), job.error
        assert job.run.has_adapter and job.last_snapshot == 1
    finally:
        job.stop()
        job.wait(300)


@pytest.mark.subprocess
def test_a_second_ctrl_c_waits_for_the_save(studio_home, style_pairs):
    """Ctrl-C twice, half a second apart: exit 130, the adapter saved, the run `stopped` (it used to abort)."""
    out = studio_home / "runs" / "ctrl-c"
    # PYTHONFAULTHANDLER: should it ever hang, SIGABRT prints every thread's stack (that is how the case below was found).
    env = {**os.environ, "STUDIO_HOME": str(studio_home), "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "studio", "train", "--data", str(style_pairs), "--max-steps", "200",
                             "--set", "eval_fraction=0", "--set", "max_length=64", "--set", "lora_r=4",
                             "--set", "save_steps=0", "--out", str(out), "--quiet"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            # As in a terminal: a suite started in the background by a script (`pytest … &`) has SIGINT
                            # ignored, the child would inherit that, and Python then never raises KeyboardInterrupt.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_for(lambda: (out / "status.json").is_file() and (get_run(out).status().get("step") or 0) >= 2, 300)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"train did not exit within 300 s of two Ctrl-C; where its threads were:\n{err[-8000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert get_run(out).state == "stopped" and get_run(out).has_adapter
    assert "will not interrupt the save" in err
