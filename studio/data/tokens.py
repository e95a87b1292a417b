"""Token counts of pairs as the trainer will see them: prompt through the chat template, answers bare."""

from __future__ import annotations

import math

from ..errors import DataError
from ..models import chat_ids


# --------------------------------------------------------------------------- tokens


def measure_prompts(kept, tokenizer, max_length: int | None):
    """Prompt lengths as the trainer will see them; drops the prompts it would drop anyway."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            "The tokenizer has no chat template, so conversational prompts cannot be rendered. "
            "Pick a chat/instruct model or give the tokenizer a chat template."
        )
    measured, dropped = [], []
    for row, pair in kept:
        try:
            length = prompt_tokens(tokenizer, pair["prompt"])
        except Exception as exc:  # templates raise on e.g. a system role they do not support
            dropped.append({"row": row, "reason": f"prompt could not be rendered with the chat template: {exc}"})
            continue
        if max_length is not None and length >= max_length:
            dropped.append({
                "row": row,
                "reason": f"prompt is {length} tokens, reaches max_length {max_length} (the trainer would drop it)",
            })
            continue
        measured.append((row, pair, length))
    return measured, dropped


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    return len(chat_ids(tokenizer, messages, add_generation_prompt=True))


def token_stats(pairs: list[dict], prompt: list[int], tokenizer) -> dict | None:
    if not pairs:
        return None
    if "completion" in pairs[0]:  # unpaired (KTO): one answer a row
        completion = answer_tokens(tokenizer, [item["completion"][0]["content"] for item in pairs])
        return {"prompt": _stats(prompt), "completion": _stats(completion),
                "pair": _stats([p + c for p, c in zip(prompt, completion)])}
    chosen = answer_tokens(tokenizer, [pair["chosen"][0]["content"] for pair in pairs])
    rejected = answer_tokens(tokenizer, [pair["rejected"][0]["content"] for pair in pairs])
    longest = [p + max(c, r) for p, c, r in zip(prompt, chosen, rejected)]
    return {"prompt": _stats(prompt), "chosen": _stats(chosen), "rejected": _stats(rejected), "pair": _stats(longest)}


def answer_tokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _stats(values: list[int]) -> dict:
    ordered = sorted(values)
    # Nearest-rank percentile: always an observed length, no interpolation surprises.
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1), "max": ordered[-1], "p95": p95}




def token_lengths(pairs: list[dict], tokenizer) -> dict[str, list[int]]:
    """Per-pair token counts (prompt as the chat template renders it, chosen, rejected), in pair order."""
    prompt = [prompt_tokens(tokenizer, pair["prompt"]) for pair in pairs]
    if pairs and "completion" in pairs[0]:  # unpaired (KTO)
        completion = answer_tokens(tokenizer, [item["completion"][0]["content"] for item in pairs])
        return {"prompt": prompt, "completion": completion, "pair": [p + c for p, c in zip(prompt, completion)]}
    chosen = answer_tokens(tokenizer, [pair["chosen"][0]["content"] for pair in pairs]) if pairs else []
    rejected = answer_tokens(tokenizer, [pair["rejected"][0]["content"] for pair in pairs]) if pairs else []
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "pair": [p + max(c, r) for p, c, r in zip(prompt, chosen, rejected)]}
