"""The studio's jargon in plain words: shown as hover help (a title) wherever a term appears on the page, and as
a list in the page's "What the words mean" section. One place for the words, so the two never disagree."""

from __future__ import annotations

import json

GLOSSARY = {
    "SFT baseline": "the model before this training: the instruction-tuned (supervised fine-tuned) model DPO starts from",
    "adapter": "the small set of extra weights LoRA trains; the base model itself stays unchanged",
    "q_proj": "one of the model's weight matrices (the attention 'query' projection); k_proj, v_proj, o_proj, "
              "gate_proj, up_proj and down_proj are its neighbours. An adapter goes on the ones listed",
    "NLL term": "an extra loss that also rewards writing the chosen answer word for word, so the model keeps fluent",
    "RPO recipe": "DPO plus that NLL term on the chosen answers (the loss types sigmoid + sft together)",
    "job slot": "the one place long work runs: one training, sweep, evaluation or export at a time, so they never "
                "slow each other down",
    "Wilson": "Wilson's score interval: the range the true win rate lies in with 95% confidence, honest for few prompts",
    "length-controlled": "the win rate with the effect of answer length taken out, so a model does not win just by "
                         "writing longer answers",
    "reward margin": "how much more the model now prefers the chosen answer over the rejected one",
    "beta": "how far DPO may move the model from where it started: small beta, bigger changes",
    "LoRA": "training a small adapter beside the frozen model instead of all its weights",
}


def glossary_markdown() -> str:
    return "\n".join(f"- **{term}**: {meaning}." for term, meaning in GLOSSARY.items())


def glossary_script() -> str:
    """A <script> that gives every label, help line, chip and caption holding a term a hover text with its meaning."""
    projections = {p: GLOSSARY["q_proj"] for p in ("k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    # "<" escaped: the JSON sits inside a <script> element.
    data = json.dumps({**GLOSSARY, **projections}).replace("<", "\\u003c")
    return f"<script>window.DS_GLOSSARY = {data};</script>"
