"""One place for each thing: a setting is declared once and reaches the form, the CLI, sweeps and TRL from there."""

import ast
import dataclasses
import sys
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


def test_sweeps_suggest_from_metadata():
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
    engine = [p for p in STUDIO.rglob("*.py") if "ui" not in p.relative_to(STUDIO).parts]
    assert STUDIO / "data" / "readers.py" in engine  # packages of the engine are read too
    for path in engine:
        assert not any(n.split(".")[0] == "gradio" for n in _imports(path)), str(path.relative_to(STUDIO))


@pytest.mark.parametrize("tab", sorted(p.name for p in (STUDIO / "ui").glob("*_tab.py")))
def test_a_tab_never_imports_another_tab(tab):
    others = {p.stem for p in (STUDIO / "ui").glob("*_tab.py")} - {Path(tab).stem}
    imported = _imports(STUDIO / "ui" / tab)
    assert not [n for n in imported if any(o in n.split(".") for o in others)], imported


# --- the web error policy (studio/ui/common.py `user_errors`) --------------------------------------------


def _caught(handler: ast.ExceptHandler) -> list[str]:
    """The names an except clause catches ("" for a bare except)."""
    if handler.type is None:
        return [""]
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return [t.attr if isinstance(t, ast.Attribute) else getattr(t, "id", "?") for t in types]


def _warns(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "Warning"
               for n in ast.walk(node))


def test_ui_handlers_leave_bugs_to_the_one_error_policy():
    """Only `user_errors` catches everything; elsewhere in the ui an except clause names what it expects, and one
    that warns the user catches only StudioErrors (a user's mistake), never a bug."""
    import studio.errors as errors

    user_kinds = {name for name, obj in vars(errors).items()
                  if isinstance(obj, type) and issubclass(obj, errors.StudioError)}
    found = []
    for path in sorted((STUDIO / "ui").glob("*.py")):
        tree = ast.parse(path.read_text())
        policy = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "user_errors"
                  for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ExceptHandler) or id(node) in policy:
                continue
            caught = _caught(node)
            where = f"{path.name}:{node.lineno} except {', '.join(caught) or '(bare)'}"
            if {"", "Exception", "BaseException"} & set(caught):
                found.append(f"{where}: catches bugs too; use @user_errors")
            elif _warns(node) and not set(caught) <= user_kinds:
                found.append(f"{where}: warns about what may be a bug; use @user_errors")
    assert not found, "\n".join(found)


# --- imports: no circles, and an import inside a function only where a heavy one is deferred on purpose ---------

DEFERRED = "# deferred:"


def _modules() -> dict[str, Path]:
    """studio's modules by dotted name (a package by its __init__)."""
    found = {}
    for path in STUDIO.rglob("*.py"):
        parts = list(path.relative_to(STUDIO.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool, modules) -> list[str]:
    """The modules an import statement loads: `from .x import y` is .x, or .x.y when y is a module itself."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    submodules = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in modules]
    return submodules + ([name] if len(submodules) < len(node.names) else [])


def _function_imports(tree: ast.Module):
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def _import_graph() -> dict[str, set[str]]:
    """module -> the studio modules it imports when it is imported (module level, under `if` / `try` too)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        inside = {id(n) for n in _function_imports(tree)}
        graph[module] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         and id(node) not in inside
                         for t in _targets(module, node, path.name == "__init__.py", modules)
                         if t in modules and t != module}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_studio_modules_import_each_other_without_a_circle():
    graph = _import_graph()
    assert "studio.config" in graph["studio.models"]  # the graph reads real edges
    circles = _circles(graph)
    assert not circles, "\n".join(" <-> ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}"
                                                                    for m in c) for c in circles)


def test_the_circle_check_finds_a_circle(tmp_path):
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def _is_deferred(lines: list[str], node: ast.AST) -> bool:
    """A `# deferred: why` comment on the import, or above the block of imports it heads."""
    if DEFERRED in " ".join(lines[node.lineno - 1:node.end_lineno]):
        return True
    row = node.lineno - 2
    while row >= 0 and lines[row].strip().startswith(("from ", "import ")):
        row -= 1
    return row >= 0 and lines[row].strip().startswith(DEFERRED)


def test_imports_inside_functions_are_deliberately_deferred_heavy_ones():
    """A studio module or the standard library is imported at the top; inside a function only with a
    `# deferred: <why>` comment (it pulls torch, or it must wait for the app to start, ...)."""
    modules = _modules()
    found = []
    for module, path in sorted(modules.items()):
        text = path.read_text()
        lines = text.splitlines()
        for node in _function_imports(ast.parse(text)):
            names = _targets(module, node, path.name == "__init__.py", modules)
            light = [n for n in names if n.split(".")[0] == "studio" or n.split(".")[0] in sys.stdlib_module_names]
            if light and not _is_deferred(lines, node):
                found.append(f"{path.relative_to(STUDIO.parent)}:{node.lineno} {lines[node.lineno - 1].strip()}")
    assert not found, f"{len(found)} imports inside functions without a '{DEFERRED} <why>' comment:\n" + "\n".join(found)
