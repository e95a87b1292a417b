"""Every CLI command that loads a model waits for the one job slot, with the message the web app refuses with.

The slot is held by a job of this test process (as the web app would hold it for a training); each command the
parser knows is started as a user starts it. A command that loads a model must say that it waits, naming the
holder, and must have loaded no weights and written nothing while it waits; Ctrl-C then gives up (exit 130).
The commands declared model-free (`studio.cli.NO_MODEL`) must finish without waiting. The list comes from the
parser itself, so a new command is either declared model-free or tested here.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from studio import cli, jobs
from studio.config import RunConfig
from studio.pools import create_pool_at
from studio.runs import Run

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "presets" / "data"
HOLDER = "held by the slot test"
# What another process reads of the holder (the lock file), as the web app's refusal says it, then the CLI's queue.
# Another process's state is not in the message: its lock file is a snapshot from when it claimed the slot.
WAITING = "A job is already running in another process (pid {pid}): {title}. " \
          "Waiting for it to finish (Ctrl-C to give up)…"

# One command line per way a command loads a model; {run}, {pool}, {prompts}, {rubric} are filled in below.
LOADS_A_MODEL = {
    "train": [["train", "--preset", "cpu-quickstart", "--max-steps", "1", "--quiet"]],
    "sweep": [["sweep", "--preset", "cpu-quickstart", "--grid", "beta=0.1,0.2", "--max-steps", "1", "--quiet"]],
    "eval": [["eval", "{run}", "--prompts", "{prompts}"]],
    "chat": [["chat", "{run}", "--prompt", "Say hello."]],
    "compare": [["compare", "{run}", "--prompts", "{prompts}"]],
    "export": [["export", "{run}", "--format", "adapter"]],
    "push": [["push", "{run}", "--repo", "someone/smollm2-dpo"]],
    "generate": [["generate", "--prompts", "{prompts}"]],
    "label": [["label", "{pool}", "--judge", "embedded"]],
    "winrate": [["winrate", "{run}", "baseline", "--prompts", "{prompts}", "--rubric", "{rubric}"],
                ["winrate", "--pool", "{pool}", "--judge", "embedded"]],
}
MODEL_FREE = {
    "presets": [["presets", "--json"]],
    "settings": [["settings", "--json"]],
    "data check": [["data", "check", str(DATA / "twin-style.jsonl"), "--json"]],
}
# Variants of slot commands that load no model, so they do not wait either (as in the web app's Label tab).
# With their exit codes: the rubric labels the (empty) pool; the pool is no win-rate pool, which is said at once.
NO_MODEL_VARIANTS = [(["label", "{pool}", "--rubric", "{rubric}"], 0),
                     (["winrate", "--pool", "{pool}", "--labeller", "rubric:x"], 2)]


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every runnable command of the parser, nested ones as `data check`."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = commands(sub, f"{prefix}{name} ")
                found |= inner or {f"{prefix}{name}"}
    return found


def test_every_command_is_either_model_free_or_tested_on_the_slot():
    known = commands(cli.build_parser())
    assert set(cli.NO_MODEL) == set(MODEL_FREE), "the test's model-free commands are the ones the CLI declares"
    assert known == set(LOADS_A_MODEL) | set(MODEL_FREE), (
        f"a command neither declared in studio.cli.NO_MODEL nor tested on the slot here: "
        f"{sorted(known - set(LOADS_A_MODEL) - set(MODEL_FREE))}")


class Started:
    """A command started as a user starts it, its stderr read line by line as it comes."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        # SIGINT at its default, as in a terminal: a suite started in a script's background would pass it on ignored.
        self.proc = subprocess.Popen([sys.executable, "-m", "studio", *argv], cwd=ROOT, env=dict(os.environ),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def waiting(self, expected: str) -> bool:
        return expected in self.lines

    def mapped_weights(self) -> list[str]:
        """Model weight files this process has mapped or open: what loading a model leaves (safetensors are mmapped)."""
        pid = self.proc.pid
        names = set()
        try:
            names |= {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                      if len(line.split()) >= 6}
            names |= {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except (FileNotFoundError, ProcessLookupError):
            return []
        return sorted(n for n in names if n.endswith((".safetensors", ".gguf", ".bin", ".pt")))


def tree(home: Path) -> set[str]:
    """Every file under STUDIO_HOME but the model cache and the lock file (an id folder claimed empty holds none)."""
    return {str(p.relative_to(home)) for p in home.rglob("*")
            if p.parts[len(home.parts)] != "models" and p.name != "job.lock" and p.is_file()}


@pytest.fixture
def slot_held(studio_home):
    release = threading.Event()
    holder = jobs.Job("test", HOLDER, work=lambda job: release.wait(900)).start()
    try:
        yield studio_home
    finally:
        release.set()
        holder.wait(30)


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_model_command_waits_for_the_slot_with_the_same_message_and_loads_nothing(slot_held, tmp_path):
    home = slot_held
    run = Run(home / "runs" / "slot-run")  # a finished run as the commands read it (they never get past the slot)
    run.path.mkdir(parents=True)
    run.write_config(RunConfig(data=str(DATA / "twin-style.jsonl")), preset="cpu-quickstart")
    run.write_status(state="done")
    pool = create_pool_at(home / "pools" / "slot-pool", "generate", models=[{"name": "embedded", "model": "embedded"}],
                          k=2, prompts=0)
    fill = {"{run}": run.id, "{pool}": str(pool.path), "{prompts}": str(DATA / "self-improve.heldout.txt"),
            "{rubric}": str(DATA / "self-improve.rubric.yaml")}
    argv = lambda line: [fill.get(a, a) for a in line]  # noqa: E731
    before = tree(home)
    held = json.loads(jobs.lock_path().read_text(encoding="utf-8"))
    assert (held["title"], held["pid"]) == (HOLDER, os.getpid())
    expected = WAITING.format(**held)

    loading = [Started(argv(line)) for lines in LOADS_A_MODEL.values() for line in lines]
    free = [(Started(argv(line)), 0) for lines in MODEL_FREE.values() for line in lines]
    free += [(Started(argv(line)), code) for line, code in NO_MODEL_VARIANTS]
    try:
        deadline = time.time() + 400  # a dozen processes importing torch at once on 2 cores
        while time.time() < deadline and not all(s.waiting(expected) or s.proc.poll() is not None for s in loading):
            time.sleep(0.5)
        for s in loading:
            assert s.waiting(expected), f"{' '.join(s.argv)} did not wait for the slot: {s.lines[-5:]} " \
                                        f"(exit {s.proc.poll()})"
            assert s.proc.poll() is None, f"{' '.join(s.argv)} ended while the slot was held"
            assert s.mapped_weights() == [], f"{' '.join(s.argv)} loaded weights while waiting"
        assert tree(home) == before, "a waiting command wrote a file into STUDIO_HOME"

        for s, code in free:  # model-free: done while the slot is still held, never waiting
            assert s.proc.wait(max(deadline - time.time(), 30)) == code, (s.argv, s.lines[-5:])
            s.reader.join(10)
            assert not any("Waiting for it to finish" in line for line in s.lines), " ".join(s.argv)

        for s in loading:  # Ctrl-C gives up the wait, as the message says
            s.proc.send_signal(signal.SIGINT)
        for s in loading:
            assert s.proc.wait(60) == 130, f"{' '.join(s.argv)}: {s.lines[-3:]}"
        assert jobs.holder()["title"] == HOLDER  # the slot stayed with its holder throughout
    finally:
        for s in loading + [s for s, _ in free]:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(10)
