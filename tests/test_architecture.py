"""One place for each thing: a setting is declared once and reaches the form, the CLI, sweeps and TRL from there."""

import ast
import dataclasses
from pathlib import Path

import gradio as gr
import pytest

from studio.config import RunConfig, fields_of, resolve_for_hardware, setting, sweepable
from studio.training import dpo_config

STUDIO = Path(__file__).resolve().parent.parent / "studio"


def test_a_new_trl_setting_is_one_line_and_reaches_the_form_and_dpo_config(tmp_path):
    # The one line a developer adds to RunConfig for a TRL option RunConfig does not have yet.
    extended = dataclasses.make_dataclass("Extended", [
        ("use_weighting", bool, setting(False, "WPO weighting of pairs", "DPO", "WPO weighting", trl=True)),
    ], bases=(RunConfig,))
    cfg = extended(use_weighting=True)
    assert dpo_config(resolve_for_hardware(cfg), tmp_path, has_eval=False).use_weighting is True

    from studio.ui.form import build_settings, config_from_widgets, widget_value

    with gr.Blocks():
        widgets = build_settings(cfg)
    assert widgets["use_weighting"].label == "WPO weighting" and widgets["use_weighting"].info == "WPO weighting of pairs"
    shown = {f.name: widget_value(f.name, getattr(cfg, f.name), extended) for f in dataclasses.fields(extended)}
    assert config_from_widgets(shown, extended) == cfg


def test_every_setting_is_documented_and_every_trl_setting_exists_in_trl():
    from trl import DPOConfig

    trl_fields = {f.name for f in dataclasses.fields(DPOConfig)}
    for f in fields_of():
        assert f.metadata.get("help") and f.metadata.get("group"), f.name
        if f.metadata.get("trl"):
            assert f.name in trl_fields, f"{f.name} is marked trl=True but DPOConfig has no such field"


def test_the_trainer_config_carries_every_shared_setting(tmp_path):
    cfg = RunConfig(beta=0.3, loss_type="sigmoid,sft", loss_weights="1,0.5", ld_alpha=0.5, learning_rate=1e-4,
                    bf16=False, gradient_checkpointing=False, optim="adamw_torch")
    args = dpo_config(cfg, tmp_path, has_eval=False)
    for key, value in cfg.trl_kwargs().items():
        assert getattr(args, key) == value, key
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 0.5]


def test_loss_choices_come_from_trl_and_sweeps_suggest_from_metadata():
    from studio.config import loss_types

    assert {"sigmoid", "ipo", "sft", "robust"} <= set(loss_types())
    assert "learning_rate" in sweepable() and "model" not in sweepable()


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            names |= {base} | {f"{base}.{a.name}" if node.module else f"{base}{a.name}" for a in node.names}
    return names


def test_the_engine_never_imports_gradio():
    for path in STUDIO.glob("*.py"):
        assert not any(n.split(".")[0] == "gradio" for n in _imports(path)), path.name


@pytest.mark.parametrize("tab", sorted(p.name for p in (STUDIO / "ui").glob("*_tab.py")))
def test_a_tab_never_imports_another_tab(tab):
    others = {p.stem for p in (STUDIO / "ui").glob("*_tab.py")} - {Path(tab).stem}
    imported = _imports(STUDIO / "ui" / tab)
    assert not [n for n in imported if any(o in n.split(".") for o in others)], imported
