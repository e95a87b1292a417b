"""How much of a model's context a chat prompt takes, checked before any generation starts.

    tokens = prompt_tokens(tokenizer, messages)          # the conversation through the chat template
    check_prompt(tokens, settings.max_new_tokens, context=8192)  # PromptError when it cannot fit
    budget_line(tokens, settings.max_new_tokens, 8192)           # "12 tokens of the model's 8,192 …"

A prompt longer than the context would be cut by the model without a word (or fail); one that leaves no
room for the answer would stop at once. Both are refused with the numbers, before the model is loaded.
"""

from __future__ import annotations

import functools

from .errors import PromptError
from .models import chat_ids, resolve_model


@functools.lru_cache(maxsize=8)
def context_length(model_spec: str) -> int | None:
    """The model's context in tokens (max_position_embeddings in its config.json); None when it does not say."""
    from transformers import AutoConfig


    config = AutoConfig.from_pretrained(resolve_model(model_spec))
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    return len(chat_ids(tokenizer, messages, add_generation_prompt=True))


def check_prompt(tokens: int, max_new_tokens: int, context: int | None) -> None:
    """Refuse a prompt that, with room for the answer, does not fit the model's context."""
    if not context:
        return
    room = context - int(max_new_tokens)
    if tokens > room:
        raise PromptError(
            f"The prompt is {tokens:,} tokens (the conversation so far included), but this model reads at most "
            f"{context:,} tokens and {int(max_new_tokens):,} are kept for the answer: shorten it by "
            f"{tokens - room:,} tokens, lower Max new tokens, or press Clear to start a new conversation. "
            f"Nothing was generated.")


def budget_line(tokens: int, max_new_tokens: int, context: int | None) -> str:
    if not context:
        return f"Prompt: {tokens:,} tokens."
    room = context - int(max_new_tokens)
    over = " (too long: it will be refused)" if tokens > room else ""
    return (f"Prompt: {tokens:,} tokens of the model's {context:,}-token context "
            f"({int(max_new_tokens):,} kept for the answer){over}.")
