"""The run settings form, built from RunConfig's field metadata: one widget per field, nothing written by hand.
The generation widgets (Chat, Compare, Grow pairs) come from GenerationSettings' metadata the same way.

A field's type, choices, bounds, label, help and group (see `studio.config.setting`) decide its
widget, so a new RunConfig field appears in the form by itself. Values go back through
`config_from_widgets`, the same validation as a preset or `--set`.
"""

from __future__ import annotations

import dataclasses
import re
import typing

import gradio as gr

from studio.config import GROUPS, RunConfig, _base_type, _field_types, choices_of
from studio.errors import ConfigError
from studio.generation import DEFAULTS, GenerationSettings, defaults

AUTO = "auto"  # the widget value of an optional choice left to the engine (None in RunConfig)
PER_ROW = 3
OPEN_GROUPS = ("Model", "Data", "LoRA", "Objective", "Optimisation")


def _optional(cls, name: str) -> bool:
    return type(None) in typing.get_args(_field_types(cls)[name])


def _kind(cls, name: str):
    return _base_type(_field_types(cls)[name])


def _is_list(cls, name: str) -> bool:
    return typing.get_origin(_kind(cls, name)) is list


def widget_value(name: str, value, cls=RunConfig):
    """A RunConfig value as its widget shows it."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if _kind(cls, name) is bool or (choices_of(f) and not _is_list(cls, name) and _optional(cls, name)):
        if value is None:
            return AUTO
        return str(value).lower() if isinstance(value, bool) else value
    if _is_list(cls, name):
        if value is None:
            return [] if choices_of(f) else ""
        return list(value) if choices_of(f) else ", ".join(str(v) for v in value)
    if value is None:
        return None if _kind(cls, name) in (int, float) and not _optional(cls, name) else ""
    return value


def bounds_text(m) -> str:
    """A field's allowed range in words, shown next to it."""
    return ", ".join(f"{op} {m[key]:g}" for key, op in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))
                     if m.get(key) is not None)


def setting_number(**kwargs) -> gr.Number:
    """A number box whose value reaches RunConfig as it was sent: the config checks it exactly as the CLI does.

    gr.Number's own preprocess would round 2.5 to 2 for a whole number (precision=0) and raise a traceback on
    NaN, inf or text before any handler runs; here 2.5, NaN, inf and text are refused by RunConfig with the
    setting's name. (Not a subclass: Gradio writes a .pyi stub beside any module that subclasses a component.)
    """
    box = gr.Number(**kwargs)
    box.preprocess = lambda payload: payload
    return box


def config_from_widgets(values: dict, cls=RunConfig) -> RunConfig:
    """Widget values by field name -> a validated config; a ConfigError names the field by its label too."""
    changes = {}
    for name, value in values.items():
        if isinstance(value, str):
            value = value.strip()
        if _optional(cls, name) and value in (None, "", AUTO, []):
            value = None
        changes[name] = value
    try:
        return cls.from_dict(changes, origin="the form")
    except ConfigError as e:
        raise ConfigError(_with_labels(str(e), cls)) from None


def _with_labels(message: str, cls) -> str:
    """An engine message with each field it names shown by its form label too ("Max new tokens: max_new_tokens …")."""
    labels = {f.name: f.metadata["label"] for f in dataclasses.fields(cls)
              if f.metadata.get("label") not in (None, f.name)}
    return re.sub(r"\b(\w+)(?= must| needs)", lambda k: f"{labels[k[1]]}: {k[1]}" if k[1] in labels else k[1],
                  message)


def generation_widget(name: str, use: str, elem_prefix: str, slider: tuple | None = None,
                      **extra) -> gr.components.Component:
    """One GenerationSettings field as its widget, from its metadata, showing the named default set `use`
    (studio.generation.DEFAULTS). `slider` (low, high, step): a range this page offers; `extra`: layout only."""
    f = {f.name: f for f in dataclasses.fields(GenerationSettings)}[name]
    return widget(f, getattr(DEFAULTS[use], name), GenerationSettings,
                  elem_id=f"{elem_prefix}-{name.replace('_', '-')}", slider=slider, **extra)


def generation_from_widgets(use: str, **values) -> GenerationSettings:
    """Widget values -> the named default set with them applied, validated; a ConfigError names the field's label."""
    try:
        return defaults(use, **values)
    except ConfigError as e:
        raise ConfigError(_with_labels(str(e), GenerationSettings)) from None


def widget(f: dataclasses.Field, value, cls=RunConfig, model_choices: list[str] | None = None,
           elem_id: str | None = None, slider: tuple | None = None, cfg_of_form=None,
           **extra) -> gr.components.Component:
    """The widget for one field, from its metadata (`slider`: a range a page offers; `cfg_of_form`: the whole config,
    for what depends on other fields, e.g. an objective's own settings shown only for it; `extra`: layout keywords)."""
    m, name = f.metadata, f.name
    kind, choices = _kind(cls, name), choices_of(f)
    info = m.get("help") or ""
    if bounds_text(m) and slider is None:  # a slider shows its own range
        info += f" ({bounds_text(m)})"
    common = {"label": m.get("label") or name, "info": info, "elem_id": elem_id or name.replace("_", "-"),
              "value": widget_value(name, value, cls), **extra}
    if m.get("objectives"):  # an objective's own setting: shown only while that objective is picked
        common["visible"] = getattr(cfg_of_form, "objective", None) in m["objectives"] if cfg_of_form else True
    if slider is not None:
        low, high, step = slider
        return gr.Slider(low, high, step=step, **common)
    if model_choices is not None and name == "model":
        return gr.Dropdown(model_choices, allow_custom_value=True, **common)
    if _is_list(cls, name):
        if choices:
            return gr.Dropdown(list(choices), multiselect=True, allow_custom_value=bool(m.get("custom")), **common)
        return gr.Textbox(placeholder="comma-separated", **common)
    if kind is bool:
        return gr.Dropdown([AUTO, "true", "false"] if _optional(cls, name) else ["true", "false"], **common)
    if choices:
        options = [AUTO, *choices] if _optional(cls, name) else list(choices)
        if len(options) <= 3:
            return gr.Radio(options, **common)
        return gr.Dropdown(options, allow_custom_value=bool(m.get("custom")), **common)
    # Numbers carry no browser-side minimum/maximum: the engine's check names the field and the range,
    # where the browser's own message ("Value 0 is less than minimum value 1.") names neither.
    if kind in (int, float) and _optional(cls, name):
        # A Number left empty has no default in the API (clients would have to send it): empty text = None.
        return gr.Textbox(placeholder="empty: off", **common)
    if kind is int:
        return setting_number(precision=0, **common)
    if kind is float:
        if m.get("ge") is not None and m.get("lt") is not None and m["lt"] <= 1 and not _optional(cls, name):
            return gr.Slider(m["ge"], m["lt"] - 0.01, step=0.01, **common)
        return setting_number(**common)
    return gr.Textbox(placeholder=AUTO if _optional(cls, name) else None, **common)


def build_settings(cfg: RunConfig, model_choices: list[str] | None = None) -> dict[str, gr.components.Component]:
    """Every field of `cfg`'s class as a widget, grouped as the metadata says; returns them by field name."""
    cls = type(cfg)
    fields = dataclasses.fields(cls)
    groups = list(GROUPS) + sorted({f.metadata.get("group", "Other") for f in fields} - set(GROUPS))
    out: dict[str, gr.components.Component] = {}
    for group in groups:
        members = [f for f in fields if f.metadata.get("group", "Other") == group]
        if not members:
            continue
        with gr.Accordion(group, open=group in OPEN_GROUPS, elem_id=f"group-{group.lower()}"):
            plain = [f for f in members if not f.metadata.get("advanced")]
            more = [f for f in members if f.metadata.get("advanced")]
            _rows(plain, cfg, out, model_choices)
            if more:
                with gr.Accordion(f"More {group.lower()} settings", open=False):
                    _rows(more, cfg, out, model_choices)
    _follow_objective(out, cls)
    return out


def objective_visibility(objective: str, cls=RunConfig) -> dict[str, bool]:
    """Field name -> shown, for the fields that belong to some objectives only."""
    return {f.name: objective in f.metadata["objectives"] for f in dataclasses.fields(cls) if f.metadata.get("objectives")}


def _follow_objective(out: dict, cls) -> None:
    """Picking an objective shows its own settings and hides the others' (their values stay, unused)."""
    owned = [name for name in objective_visibility("dpo", cls) if name in out]
    if "objective" not in out or not owned:
        return

    def show(objective):
        visible = objective_visibility(objective, cls)
        return [gr.update(visible=visible[name]) for name in owned]

    out["objective"].change(show, inputs=out["objective"], outputs=[out[n] for n in owned], show_progress="hidden",
                            api_visibility="private", queue=False)


def _rows(fields, cfg, out, model_choices) -> None:
    cls = type(cfg)
    for i in range(0, len(fields), PER_ROW):
        with gr.Row():
            for f in fields[i:i + PER_ROW]:
                out[f.name] = widget(f, getattr(cfg, f.name), cls, model_choices, cfg_of_form=cfg)
