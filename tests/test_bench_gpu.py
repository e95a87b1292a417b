"""bench/bench_gpu.py without a GPU: its arguments are checked, and its dry run trains a tiny model two steps on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench_gpu.py"


def bench(*args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    if home is not None:
        env["STUDIO_HOME"] = str(home)
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.subprocess
def test_bad_arguments_are_refused_before_anything_runs():
    out = bench("--models", "9b,1.7b", "--methods", "dora", "--steps", "2")
    assert out.returncode == 2
    assert "--models: 9b not among 135m, 1.7b, 8b" in out.stderr
    assert "--methods: dora not among lora, qlora" in out.stderr and "--steps must be at least 3" in out.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_dry_run_trains_a_tiny_model_two_steps_through_the_engine(studio_home):
    out = bench("--dry-run", home=studio_home)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dry run passed: 2 steps" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("| tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:6] == ["transformers+peft", "lora", "preset", "2 x 1", "off"]  # what actually ran, from config.yaml
    assert float(cells[6]) > 0 and float(cells[7]) > 0  # s/step and tokens/s were measured
    assert "fitted (for an imaginary 8 GB card" in out.stderr
    assert not (studio_home / "runs").exists()  # the dry run keeps its runs in a temporary home
