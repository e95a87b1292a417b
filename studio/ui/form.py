"""The run settings form, built from RunConfig's field metadata: one widget per field, nothing written by hand.

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

AUTO = "auto"  # the widget value of an optional choice left to the engine (None in RunConfig)
PER_ROW = 3
OPEN_GROUPS = ("Model", "Data", "LoRA", "DPO", "Optimisation")


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
        labels = {f.name: f.metadata["label"] for f in dataclasses.fields(cls)
                  if f.metadata.get("label") not in (None, f.name)}
        named = re.sub(r"\b(\w+)(?= must| needs)", lambda k: f"{labels[k[1]]}: {k[1]}" if k[1] in labels else k[1],
                       str(e))
        raise ConfigError(named) from None


def widget(f: dataclasses.Field, value, cls=RunConfig, model_choices: list[str] | None = None) -> gr.components.Component:
    """The widget for one field, from its metadata."""
    m, name = f.metadata, f.name
    kind, choices = _kind(cls, name), choices_of(f)
    info = m.get("help") or ""
    if bounds_text(m):
        info += f" ({bounds_text(m)})"
    common = {"label": m.get("label") or name, "info": info, "elem_id": name.replace("_", "-"),
              "value": widget_value(name, value, cls)}
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
    return out


def _rows(fields, cfg, out, model_choices) -> None:
    cls = type(cfg)
    for i in range(0, len(fields), PER_ROW):
        with gr.Row():
            for f in fields[i:i + PER_ROW]:
                out[f.name] = widget(f, getattr(cfg, f.name), cls, model_choices)
