"""Backend choice per run, Unsloth's early import, our pad token after a loader changed it, and `import studio`
finding this project even where Unsloth's wheel installed a package of the same name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.backends import UNSLOTH_MIN_STEPS, UNSLOTH_MIN_GAIN_S, UNSLOTH_START_S, choose_backend, planned_steps
from studio.config import Hardware
from studio.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CPU = Hardware(cuda=False, bf16=False, bitsandbytes=False, unsloth=False, device_name="CPU")
GPU = Hardware(cuda=True, bf16=True, bitsandbytes=True, unsloth=False, device_name="GPU")
GPU_UNSLOTH = Hardware(cuda=True, bf16=True, bitsandbytes=True, unsloth=True, device_name="GPU")


def test_auto_takes_unsloth_on_cuda_only_for_runs_long_enough_to_repay_its_start_up():
    assert UNSLOTH_MIN_STEPS == 223 == -(-UNSLOTH_START_S // UNSLOTH_MIN_GAIN_S)  # 40 s / 0.18 s a step
    assert choose_backend("auto", GPU_UNSLOTH, planned_steps=500)[0] == "unsloth"
    assert choose_backend("auto", GPU_UNSLOTH, planned_steps=None)[0] == "unsloth"  # unknown length: a long run
    backend, why = choose_backend("auto", GPU_UNSLOTH, planned_steps=43)
    assert backend == "transformers" and "43 steps is too short" in why
    assert choose_backend("auto", GPU_UNSLOTH, planned_steps=UNSLOTH_MIN_STEPS)[0] == "unsloth"
    assert choose_backend("auto", GPU, planned_steps=5000) == ("transformers",
                                                               "Unsloth is unavailable here (the unsloth package is not installed)")
    assert choose_backend("auto", CPU, 5000)[0] == "transformers"


def test_an_explicit_backend_wins_or_is_refused_with_the_reason():
    assert choose_backend("unsloth", GPU_UNSLOTH, planned_steps=10)[0] == "unsloth"  # even a short run
    assert choose_backend("transformers", GPU_UNSLOTH, planned_steps=5000)[0] == "transformers"
    with pytest.raises(ConfigError, match="backend unsloth needs a CUDA GPU.*no CUDA GPU"):
        choose_backend("unsloth", CPU)
    with pytest.raises(ConfigError, match="backend must be one of auto, unsloth, transformers, got 'fast'"):
        choose_backend("fast", GPU_UNSLOTH)


def test_once_unsloth_is_loaded_in_a_process_every_run_in_it_takes_unsloth():
    """Unsloth's patches are process-wide: on an H200 a transformers+PEFT run after `import unsloth` failed (LoRA
    weights left on the CPU, QLoRA refused). So auto means Unsloth even for a short run, and transformers is refused
    before any run folder, with the way out."""
    backend, why = choose_backend("auto", GPU_UNSLOTH, planned_steps=12, unsloth_loaded=True)
    assert backend == "unsloth" and "already loaded" in why
    with pytest.raises(ConfigError, match="already loaded Unsloth.*--set backend=transformers"):
        choose_backend("transformers", GPU_UNSLOTH, unsloth_loaded=True)
    assert choose_backend("transformers", GPU_UNSLOTH, unsloth_loaded=False)[0] == "transformers"


def test_the_cli_asks_early_import_for_the_runs_backend_and_length():
    """`train --set backend=transformers` must never import Unsloth: the backend is read from the flags, then the
    preset, before anything imports torch."""
    from studio.cli import _asked_backend, build_parser

    parse = build_parser().parse_args
    assert _asked_backend(parse(["train", "--set", "backend=transformers", "--max-steps", "12"])) == ("transformers", 12)
    assert _asked_backend(parse(["train", "--preset", "cpu-quickstart"])) == ("auto", None)
    assert _asked_backend(parse(["train", "--preset", "no-such-preset"])) == ("auto", None)
    assert _asked_backend(parse(["sweep", "--set", "backend=unsloth", "--max-steps", "3"])) == ("unsloth", 3)


def test_planned_steps_count_as_the_trainer_does():
    assert planned_steps(40, 1.0, 170, 2) == 40
    assert planned_steps(-1, 2.0, 170, 8) == 44  # 22 steps an epoch (the last one short), two epochs
    assert planned_steps(-1, 1.0, 3, 8) == 1


def _python(code: str, env_extra: dict | None = None, args: tuple = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([sys.executable, *args, "-c", code], cwd=ROOT, env={**env, **(env_extra or {})},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.subprocess
def test_early_import_is_a_cheap_no_op_without_unsloth():
    out = _python("import sys, json; from studio.backends import early_import; "
                  "r = [early_import('auto'), early_import('transformers'), early_import('auto', planned_steps=10)]; "
                  "print(json.dumps([r, 'torch' in sys.modules]))")
    assert out.returncode == 0, out.stderr
    results, torch_imported = json.loads(out.stdout.splitlines()[-1])
    assert [r[0] for r in results] == [False, False, False]
    assert results[0][1] == "unsloth is not installed" and "transformers was asked for" in results[1][1]
    assert torch_imported is False  # deciding not to import Unsloth must not cost a torch import


@pytest.mark.subprocess
def test_early_import_never_imports_unsloth_without_cuda(tmp_path):
    """An installed Unsloth on a machine without CUDA: it is found, torch says no GPU, and it is left alone."""
    fake = tmp_path / "site" / "unsloth"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('unsloth was imported')\n")
    out = _python("import json; from studio.backends import early_import; print(json.dumps(early_import('auto')))",
                  {"PYTHONPATH": str(tmp_path / "site"), "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [False, "no CUDA GPU"]


def test_our_pad_token_is_put_back_after_a_loader_changed_it(studio_home):
    """What Unsloth does to SmolLM2 (pad <|im_end|> -> <|endoftext|>), undone and recorded."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from studio.models import embedded_checkpoint, keep_pad_token, load_tokenizer

    path = str(embedded_checkpoint())
    tokenizer = load_tokenizer(path)
    ours = tokenizer.pad_token
    config = AutoConfig.from_pretrained(path)  # the embedded model's config on a one-layer body: seconds, not 30
    config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.head_dim = 64, 64, 1, 16
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig.from_pretrained(path)
    tokenizer.pad_token = "<|endoftext|>"
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    note = keep_pad_token(model, tokenizer, ours)
    assert tokenizer.pad_token == ours == "<|im_end|>"
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.convert_tokens_to_ids(ours)
    assert "'<|endoftext|>'" in note and "restored '<|im_end|>'" in note
    assert keep_pad_token(model, tokenizer, ours) is None  # nothing changed, nothing to record


# --- `import studio` is this project, whatever else is called studio -----------------------------

@pytest.fixture
def impostor(tmp_path) -> Path:
    """A site-packages folder holding a top-level `studio` package, as the unsloth wheel installs."""
    site = tmp_path / "site-packages"
    (site / "studio").mkdir(parents=True)
    (site / "studio" / "__init__.py").write_text("raise ImportError('this is not DPO Studio')\n")
    return site


@pytest.mark.subprocess
def test_python_m_studio_runs_this_project_with_an_impostor_on_pythonpath(impostor):
    """PYTHONPATH comes before site-packages (the GPU kit ran Unsloth this way); the cwd comes before both."""
    out = subprocess.run([sys.executable, "-m", "studio", "presets", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(impostor)})
    assert out.returncode == 0, out.stderr
    assert "cpu-quickstart" in [p["name"] for p in json.loads(out.stdout)]


@pytest.mark.subprocess
@pytest.mark.parametrize("where", ["first", "last"])
def test_a_script_puts_this_project_first_on_the_path(impostor, where):
    """`python -P` keeps the script's own folder off sys.path: only the script's path fix can find this project.

    bench/bench_gpu.py imports studio at the top (after the same two-line fix app.py has), so its --help
    fails with the impostor's ImportError unless the fix works.
    """
    add = f"sys.path.insert(0, {str(impostor)!r})" if where == "first" else f"sys.path.append({str(impostor)!r})"
    out = _python(f"import runpy, sys; {add}; sys.argv = ['bench_gpu.py', '--help']; "
                  f"runpy.run_path({str(ROOT / 'bench' / 'bench_gpu.py')!r}, run_name='__main__')", args=("-P",))
    assert out.returncode == 0, out.stderr
    assert "DPO speed and memory on a GPU" in out.stdout
