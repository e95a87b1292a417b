"""Normalise one record to TRL's conversational preference form, or say why the row cannot be used."""

from __future__ import annotations

import math
import re

from .layouts import Plan, as_messages
from .readers import json_fault, loads
from .text import RowFault, check_size_and_bytes, type_name
from .unpaired import thumbs

ROLES = ("system", "user", "assistant")
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


# --------------------------------------------------------------------------- row normalisation


def normalise(record: dict, plan: Plan) -> dict:
    if plan.unpaired:
        return _unpaired_row(record, plan)
    if plan.answers == "text":
        prompt, chosen, rejected = _text_row(record, plan)
    elif plan.answers == "messages":
        prompt, chosen, rejected = _messages_row(record, plan)
    else:
        prompt, chosen, rejected = _transcript_row(record, plan)
    prompt = _with_system(prompt, record, plan.system)
    _check_prompt(prompt)
    if chosen.strip() == rejected.strip():
        raise RowFault("chosen is identical to rejected")
    return {"prompt": prompt, "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}


def _unpaired_row(record: dict, plan: Plan) -> dict:
    """KTO's layout: {"prompt", "completion": [one assistant message], "label": bool}."""

    label = thumbs(record.get(plan.label))
    value = _value(record, plan.chosen, "completion")
    listed = as_messages(value, plan.fmt)
    if listed is not None:
        context, text = _split_answer(_messages(listed, "completion"), "completion")
        if context:  # the conversation before the answer is (the rest of) the prompt
            head = as_messages(record.get(plan.prompt), plan.fmt) if plan.prompt else None
            prompt = _messages(head, "prompt") + context if head else context
        else:
            prompt = _prompt_messages(record, plan)
    else:
        prompt, text = _prompt_messages(record, plan), _text(value, "completion")
    prompt = _with_system(prompt, record, plan.system)
    _check_prompt(prompt)
    return {"prompt": prompt, "completion": [_assistant(text)], "label": label}


def _text_row(record: dict, plan: Plan) -> tuple[list[dict], str, str]:
    prompt = _prompt_messages(record, plan)
    chosen = _text(_value(record, plan.chosen, "chosen"), "chosen")
    rejected = _text(_value(record, plan.rejected, "rejected"), "rejected")
    return prompt, chosen, rejected


def _messages_row(record: dict, plan: Plan) -> tuple[list[dict], str, str]:
    chosen_context, chosen = _split_answer(_conversation(record, plan.chosen, "chosen", plan.fmt), "chosen")
    rejected_context, rejected = _split_answer(
        _conversation(record, plan.rejected, "rejected", plan.fmt), "rejected"
    )
    if _turn_keys(chosen_context) != _turn_keys(rejected_context):
        raise RowFault("chosen and rejected differ before the final assistant message (the prompt must be shared)")
    if not chosen_context:
        if not plan.prompt:
            raise RowFault("prompt is missing: chosen holds only the answer and there is no prompt column")
        return _prompt_messages(record, plan), chosen, rejected
    # A separate prompt *string* (UltraFeedback) repeats the conversation's first turn; a prompt
    # *message list* (TRL) is the start of the conversation that chosen/rejected continue.
    head = as_messages(record.get(plan.prompt), plan.fmt) if plan.prompt else None
    prompt = _messages(head, "prompt") + chosen_context if head else chosen_context
    return prompt, chosen, rejected


def _transcript_row(record: dict, plan: Plan) -> tuple[list[dict], str, str]:
    chosen_context, chosen = _split_answer(_transcript(record, plan.chosen, "chosen"), "chosen")
    rejected_context, rejected = _split_answer(_transcript(record, plan.rejected, "rejected"), "rejected")
    if _turn_keys(chosen_context) != _turn_keys(rejected_context):
        raise RowFault("chosen and rejected differ before the final Assistant turn (the prompt must be shared)")
    if not chosen_context:
        raise RowFault("prompt is empty: chosen has no Human turn before the final Assistant turn")
    return _messages(chosen_context, "prompt"), chosen, rejected


def _prompt_messages(record: dict, plan: Plan) -> list[dict]:
    value = _value(record, plan.prompt, "prompt")
    listed = as_messages(value, plan.fmt)
    if listed is not None:
        return _messages(listed, "prompt")
    text = _text(value, "prompt")
    extra = record.get(plan.input) if plan.input else None
    if extra is not None and not isinstance(extra, str):
        raise RowFault(f"input is not text (got {type_name(extra)})")
    if extra:
        check_size_and_bytes(extra, "input")
    if extra and extra.strip():
        text = f"{text}\n\n{extra}"
    return [{"role": "user", "content": text}]


def _conversation(record: dict, column: str, part: str, fmt: str) -> list[dict]:
    value = _value(record, column, part)
    if fmt == "csv" and isinstance(value, str):
        try:
            value = loads(value)
        except ValueError as exc:
            raise RowFault(f"{part} is not a valid JSON message list: {json_fault(exc)}") from None
    if not isinstance(value, list):
        raise RowFault(f"{part} is not a message list (got {type_name(value)})")
    return _messages(value, part)


def _transcript(record: dict, column: str, part: str) -> list[dict]:
    text = _text(_value(record, column, part), part).strip()
    pieces = _TURN.split(text)
    if pieces[0].strip() or len(pieces) < 3:
        raise RowFault(f"{part} is not a Human:/Assistant: transcript")
    return [
        {"role": "user" if speaker == "Human" else "assistant", "content": body.strip()}
        for speaker, body in zip(pieces[1::2], pieces[2::2])
    ]


def _split_answer(messages: list[dict], part: str) -> tuple[list[dict], str]:
    last = messages[-1]
    if last["role"] != "assistant":
        raise RowFault(f"{part}: last message is from '{last['role']}', expected 'assistant'")
    if not last["content"].strip():
        raise RowFault(f"{part} is empty")
    return messages[:-1], last["content"]


def _messages(value: list, part: str) -> list[dict]:
    if not value:
        raise RowFault(f"{part} is empty")
    out = []
    for number, message in enumerate(value, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowFault(f"{part}: message {number} is not a {{role, content}} object")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise RowFault(f"{part}: message {number} has unknown role {role!r}")
        if not isinstance(content, str):
            raise RowFault(f"{part}: message {number} content is not text (got {type_name(content)})")
        if not content.strip():
            raise RowFault(f"{part}: message {number} has empty content")
        check_size_and_bytes(content, f"{part}: message {number}")
        # Keep only role/content: extra keys would make Arrow columns ragged across rows.
        out.append({"role": role, "content": content})
    return out


def _with_system(prompt: list[dict], record: dict, column: str | None) -> list[dict]:
    if not column:
        return prompt
    value = record.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return prompt
    if not isinstance(value, str):
        raise RowFault(f"system is not text (got {type_name(value)})")
    check_size_and_bytes(value, "system")
    if prompt and prompt[0]["role"] == "system":
        return prompt  # the conversation's own system message is the more specific one
    return [{"role": "system", "content": value}] + prompt


def _check_prompt(prompt: list[dict]) -> None:
    last = prompt[-1]["role"]
    if last != "user":
        raise RowFault(f"prompt: last message is from '{last}', expected 'user'")


def _value(record: dict, column: str, part: str):
    value = record.get(column)
    if value is None:
        raise RowFault(f"{part} is missing")
    if isinstance(value, float) and math.isnan(value):
        raise RowFault(f"{part} is missing (NaN)")
    return value


def _text(value, part: str) -> str:
    if not isinstance(value, str):
        raise RowFault(f"{part} is not text (got {type_name(value)})")
    if not value.strip():
        raise RowFault(f"{part} is empty")
    check_size_and_bytes(value, part)
    return value



def _turn_keys(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"].strip()) for m in messages]


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
