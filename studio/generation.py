"""`GenerationSettings`: how a model answers, declared once with `setting()` metadata as `RunConfig` is,
and the named default sets that each use of generation starts from.

The web widgets (`studio.ui.form.generation_widget`) and the CLI's flags (`--max-new-tokens`,
`--temperature`, … in `studio.cli`) are built from these fields, and every place that generates takes
its defaults from `DEFAULTS` by name, so a number changes here once. No torch here: the rubric, the
CLI's parser and the web forms import it at once.

    settings = defaults("probes", max_new_tokens=8)   # the probe set with one value changed (validated)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import _bound_problem, coerce, setting
from .errors import ConfigError

GROUP = "Generation"


@dataclass
class GenerationSettings:
    max_new_tokens: int = setting(200, "the longest answer in tokens; an answer cut here did not end on its own",
                                  GROUP, "Max new tokens", ge=1, le=8192)
    temperature: float = setting(0.0, "0 = greedy: the likeliest token each time, so the same answer every time; "
                                 "above 0 samples", GROUP, "Temperature", ge=0, le=10)
    top_p: float = setting(0.9, "with temperature above 0: sample from the likeliest tokens holding this share",
                           GROUP, "Top-p", gt=0, le=1)
    seed: int = setting(0, "the sampling seed: the same seed, settings and model give the same answers", GROUP,
                        "Seed", ge=0, le=2**32 - 1)
    # Off by default: both hide the looping a damaged model falls into, which the probe measures should see.
    repetition_penalty: float = setting(1.0, "> 1 makes tokens already in the answer less likely (1.0 = off)", GROUP,
                                        "Repetition penalty", gt=0, le=10, hint="1.0 = off", advanced=True)
    no_repeat_ngram_size: int = setting(0, "> 0 forbids repeating any n-gram of this many tokens (0 = off)", GROUP,
                                        "No-repeat n-gram size", ge=0, le=100, hint="0 = off", advanced=True)

    def __post_init__(self):
        problems = []
        for f in dataclasses.fields(self):  # values from code, a form or a flag all arrive typed and in bounds
            value = coerce(f.name, getattr(self, f.name), type(self))
            setattr(self, f.name, value)
            problem = _bound_problem(f.name, value, f.metadata)
            if problem:
                problems.append(problem)
        if problems:
            raise ConfigError("; ".join(problems))

    def kwargs(self) -> dict:
        out = {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            out.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        # Passed only when set, so generate() runs exactly as before for everyone who leaves them off.
        if self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return out

    def replace(self, **changes) -> "GenerationSettings":
        return dataclasses.replace(self, **changes)


# The one place for the numbers. Each set says why it differs from the plain defaults above.
DEFAULTS: dict[str, GenerationSettings] = {
    # A chat answer: a full reply of a few paragraphs, greedy so the two panes differ only by the adapter.
    "chat": GenerationSettings(),
    # The Chat tab: the same, with a mild penalty that stops a 135M model's loops without changing a normal answer.
    "chat_tab": GenerationSettings(repetition_penalty=1.1),
    # Probe answers (evaluation, probe grids, sweeps): a paragraph, greedy, so a column changes only when the
    # weights do; 12 probes x 160 tokens is ~1 min per column on 2 CPU cores.
    "probes": GenerationSettings(max_new_tokens=160, temperature=0.0),
    # Pool generation: K sampled answers must differ (greedy would give K copies); short, so labelling stays quick.
    "pool": GenerationSettings(max_new_tokens=128, temperature=0.8, top_p=0.95),
    # Win rate: greedy, so a measurement is reproducible; as long as the pools it compares against.
    "winrate": GenerationSettings(max_new_tokens=128, temperature=0.0),
}


def defaults(name: str, **changes) -> GenerationSettings:
    """The named default set (a fresh copy), with `changes` applied and validated."""
    if name not in DEFAULTS:
        raise ConfigError(f"No generation defaults named {name!r}; known: {', '.join(DEFAULTS)}")
    return DEFAULTS[name].replace(**changes)

