"""Issue 21: no stuck state. A full disk mid-run (every write in the run's folder refused with ENOSPC from step 2 on,
injected at the storage layer; the trainer and the model are real) ends the run `failed` with a message, frees the
slot, and Stop, Resume and Delete all agree with that. The CLI refuses an unwritable STUDIO_HOME with exit 2."""

import builtins
import errno
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest

from studio import cli, jobs, runs
from studio.runs import Run, delete_run
from studio.training import TrainingJob

from helpers import At, quick_config

ROOT = Path(__file__).resolve().parent.parent


class FullDisk:
    """From `on()`, any write under `folder` raises OSError(ENOSPC), as a full filesystem does."""

    def __init__(self, monkeypatch, folder_of):
        self.full, self.folder_of = False, folder_of
        real_open, real_path_open, real_atomic = builtins.open, pathlib.Path.open, runs.atomic_write

        def refuse(path, mode="r"):
            folder = self.folder_of()
            if self.full and folder is not None and any(m in str(mode) for m in "wax+"):
                try:
                    inside = Path(os.path.abspath(path)).is_relative_to(folder)
                except (TypeError, ValueError):
                    inside = False
                if inside:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        def fake_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                refuse(file, mode)
            return real_open(file, mode, *args, **kwargs)

        def fake_path_open(self_, mode="r", *args, **kwargs):
            refuse(self_, mode)
            return real_path_open(self_, mode, *args, **kwargs)

        def fake_atomic(path, text):
            refuse(path, "w")
            return real_atomic(path, text)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(pathlib.Path, "open", fake_path_open)
        monkeypatch.setattr(runs, "atomic_write", fake_atomic)

    def on(self, *_):
        self.full = True


@pytest.mark.slow
def test_a_full_disk_mid_run_ends_it_failed_and_frees_the_slot(studio_home, style_pairs, monkeypatch):
    job = None
    disk = FullDisk(monkeypatch, lambda: job.run.path if job is not None else None)
    job = TrainingJob(quick_config(style_pairs, max_steps=4, eval_fraction=0), callbacks=[At(2, disk.on)])
    job.start()
    assert job.wait(300) == "failed"
    assert "disk is full" in job.error.lower(), job.error
    assert TrainingJob.active() is None and jobs.holder() is None  # the slot is free
    on_disk = (job.run.path / "status.json").read_text()
    assert '"training"' in on_disk  # the last write that got through: without the fix, "training 2/4" forever
    disk.full = False
    progress = Run(job.run.path).progress()
    assert progress["state"] == "failed" and progress["eta"] is None
    assert "could not be written" in progress["error"] or "disk" in progress["error"].lower()
    refusal = Run(job.run.path).resume_refusal() or ""
    assert "still" not in refusal  # Resume does not say it is still training
    delete_run(Run(job.run.path))  # Delete is not refused
    assert not job.run.path.exists()


def test_a_write_that_fails_before_the_run_starts_is_a_refusal_and_frees_the_slot(studio_home, style_pairs,
                                                                                   monkeypatch):
    from studio.errors import StudioError

    real = runs.atomic_write

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runs, "atomic_write", full)
    with pytest.raises(StudioError, match="disk is full"):
        TrainingJob(quick_config(style_pairs)).start()
    monkeypatch.setattr(runs, "atomic_write", real)
    assert jobs.holder() is None and TrainingJob.active() is None


# The /proc home goes through a real `python -m studio` process (the exit status a shell sees); the file-as-parent
# home through the same entry point in this process, which spares it the ~8 s of imports and proves the same check.
@pytest.mark.parametrize("home", ["file-as-parent", pytest.param("/proc/studio-home", marks=pytest.mark.subprocess)])
def test_the_cli_refuses_an_unwritable_home_with_exit_2(tmp_path, style_pairs, home, monkeypatch, capsys):
    argv = ["train", "--data", str(style_pairs)]
    if home == "file-as-parent":
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        monkeypatch.setenv("STUDIO_HOME", str(blocker / "home"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        code, stderr = cli.main(argv), capsys.readouterr().err
    else:
        env = {**os.environ, "STUDIO_HOME": home, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-m", "studio", *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        code, stderr = done.returncode, done.stderr
    assert code == 2, stderr[-2000:]
    assert "STUDIO_HOME" in stderr and "not writable" in stderr and "Traceback" not in stderr
