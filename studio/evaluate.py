"""What DPO changed: held-out preference accuracy (baseline vs tuned), implicit rewards, and probe grids.

Baseline and tuned are scored the same way, from one copy of the base weights: the tuned scores
with the run's adapter on, the baseline scores with it switched off.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .runs import Run, get_run


class EvalError(ValueError):
    """A message fit to show a user as-is."""


def _ids(tokenizer, messages, **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def _encode_pair(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], int]:
    """Token ids of prompt+answer as the trainer sees them, and where the answer starts."""
    prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True)
    full = _ids(tokenizer, prompt + [{"role": "assistant", "content": answer}])
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return full, start


@torch.no_grad()
def sequence_logps(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 8,
                   mean: bool = False) -> torch.Tensor:
    """Summed (or per-token mean) log-probability of each answer given its prompt."""
    device = next(model.parameters()).device
    encoded = [_encode_pair(tokenizer, p, a) for p, a in zip(prompts, answers)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        answer_mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, (ids, start) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
            answer_mask[row, start: len(ids)] = True
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logps = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        m = answer_mask[:, 1:].to(device)
        sums = (token_logps * m).sum(-1)
        out.append((sums / m.sum(-1).clamp(min=1)) if mean else sums)
    return torch.cat(out).cpu() if out else torch.empty(0)
