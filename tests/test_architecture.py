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
        ("use_weighting", bool, setting(False, "WPO weighting of pairs", "Objective", "WPO weighting", trl=True,
                                        objectives=("dpo",))),
    ], bases=(RunConfig,))
    cfg = extended(use_weighting=True)
    assert dpo_config(resolve_for_hardware(cfg), tmp_path, has_eval=False).use_weighting is True

    from studio.ui.form import build_settings, config_from_widgets, widget_value

    with gr.Blocks():
        widgets = build_settings(cfg)
    assert widgets["use_weighting"].label == "WPO weighting" and widgets["use_weighting"].info == "WPO weighting of pairs"
    shown = {f.name: widget_value(f.name, getattr(cfg, f.name), extended) for f in dataclasses.fields(extended)}
    assert config_from_widgets(shown, extended) == cfg


def test_every_setting_is_documented_and_every_trl_setting_exists_in_each_objectives_trl_config():
    from studio.config import OBJECTIVES, applies, trl_name
    from studio.objectives import objective

    for name in OBJECTIVES:
        obj = objective(name)
        trl_fields = obj.config_fields()
        for f in fields_of():
            assert f.metadata.get("help") and f.metadata.get("group"), f.name
            if f.metadata.get("trl") and applies(f, name):
                assert trl_name(f) in trl_fields, (
                    f"{f.name} is passed to objective {name} as {trl_name(f)}, but {obj.config} has no such field")
        for key, _ in obj.fixed:
            assert key in trl_fields, f"{obj.config} has no field {key} that objective {name} fixes"


@pytest.mark.parametrize("name", ["dpo", "kto", "orpo", "simpo"])
def test_each_objective_gets_its_trl_config_class_with_only_its_own_settings(tmp_path, name):
    from studio.objectives import objective
    from studio.training import trainer_config

    cfg = RunConfig(objective=name, beta=0.3, orpo_beta=0.2, simpo_beta=2.5, simpo_gamma=1.2, desirable_weight=1.33,
                    learning_rate=1e-4, bf16=False, gradient_checkpointing=False, optim="adamw_torch")
    args = trainer_config(cfg, tmp_path, has_eval=False)
    assert type(args).__name__ == objective(name).config
    assert args.beta == {"dpo": 0.3, "kto": 0.3, "orpo": 0.2, "simpo": 2.5}[name]
    assert args.learning_rate == 1e-4 and args.max_length == cfg.max_length
    if name == "simpo":
        assert args.loss_type == "simpo" and args.cpo_alpha == 0.0 and args.simpo_gamma == 1.2
    if name == "kto":
        assert args.desirable_weight == 1.33 and args.undesirable_weight == 1.0
    # The reference pass is precomputed (and cached) where there is a reference; ORPO and SimPO have none.
    assert getattr(args, "precompute_ref_log_probs", False) is (name in ("dpo", "kto"))


def test_a_trl_field_the_objectives_config_lacks_is_refused_by_name(tmp_path):
    from studio.training import UnknownTrlField, trainer_config

    extended = dataclasses.make_dataclass("Extended", [
        ("use_weighting", bool, setting(False, "WPO weighting of pairs", "Objective", "WPO weighting", trl=True)),
    ], bases=(RunConfig,))
    with pytest.raises(UnknownTrlField, match="ORPOConfig \\(objective orpo\\) has no field use_weighting"):
        trainer_config(extended(objective="orpo", bf16=False, gradient_checkpointing=False), tmp_path, has_eval=False)


def test_an_objectives_own_settings_show_only_for_it():
    from studio.ui.form import build_settings, objective_visibility

    assert objective_visibility("kto") == {"beta": True, "loss_type": False, "loss_weights": False, "ld_alpha": False,
                                           "label_smoothing": False, "desirable_weight": True,
                                           "undesirable_weight": True, "orpo_beta": False, "simpo_beta": False,
                                           "simpo_gamma": False}
    assert {k for k, v in objective_visibility("simpo").items() if v} == {"simpo_beta", "simpo_gamma"}
    with gr.Blocks():
        widgets = build_settings(RunConfig(objective="orpo"))
    assert widgets["orpo_beta"].visible and not widgets["beta"].visible and not widgets["simpo_gamma"].visible
    assert widgets["learning_rate"].visible and widgets["objective"].value == "orpo"
    assert "objective" in sweepable() and set(sweepable()["objective"]) == {"dpo", "kto", "orpo", "simpo"}


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
