"""GenerationSettings is declared once: its metadata, the named default sets, and the CLI flags built from them."""

import dataclasses
import re
from pathlib import Path

import pytest

from studio import cli
from studio.errors import ConfigError
from studio.generation import DEFAULTS, GenerationSettings, defaults
from studio.probes import probe_settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_field_is_declared_with_help_label_group_and_bounds():
    for f in dataclasses.fields(GenerationSettings):
        m = f.metadata
        assert m["help"] and m["label"] and m["group"] == "Generation", f.name
        assert any(m.get(k) is not None for k in ("gt", "ge", "lt", "le")), f"{f.name} has no bounds"


@pytest.mark.parametrize("changes, words", [
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
    ({"temperature": -0.5}, "temperature must be at least 0, got -0.5"),
    ({"top_p": 0}, "top_p must be > 0, got 0.0"),
    ({"repetition_penalty": 0}, "repetition_penalty must be > 0, got 0.0 (1.0 = off)"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be at least 0, got -1"),
    ({"max_new_tokens": "many"}, "max_new_tokens must be int, got 'many'"),
])
def test_a_bad_value_is_refused_naming_the_field(changes, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        GenerationSettings(**changes)


def test_the_named_sets_keep_each_use_s_numbers():
    # The numbers each place used before they were declared here (issue 19): chat 200 greedy, probes 160 greedy,
    # pools 128 sampled at 0.8 / 0.95, win rates 128 greedy; the Chat tab adds a mild repetition penalty.
    assert (DEFAULTS["chat"].max_new_tokens, DEFAULTS["chat"].temperature, DEFAULTS["chat"].top_p) == (200, 0.0, 0.9)
    assert DEFAULTS["chat_tab"] == GenerationSettings(repetition_penalty=1.1)
    assert (DEFAULTS["probes"].max_new_tokens, DEFAULTS["probes"].temperature) == (160, 0.0)
    assert (DEFAULTS["pool"].max_new_tokens, DEFAULTS["pool"].temperature, DEFAULTS["pool"].top_p) == (128, 0.8, 0.95)
    assert (DEFAULTS["winrate"].max_new_tokens, DEFAULTS["winrate"].temperature) == (128, 0.0)
    assert probe_settings() == defaults("probes") and probe_settings(8) == defaults("probes", max_new_tokens=8)
    changed = defaults("pool", seed=3)
    assert changed.seed == 3 and DEFAULTS["pool"].seed == 0  # a copy: the declared set never changes
    with pytest.raises(ConfigError, match="No generation defaults named 'fast'"):
        defaults("fast")


@pytest.mark.parametrize("argv, use, names", [
    (["chat", "RUN", "--prompt", "hi"], "chat", {"max_new_tokens", "temperature", "seed"}),
    (["eval", "RUN"], "probes", {"max_new_tokens"}),
    (["compare", "RUN"], "probes", {"max_new_tokens"}),
    (["sweep", "--grid", "beta=0.1,0.2"], "probes", {"max_new_tokens"}),
    (["generate", "--prompts", "p.txt"], "pool", {"temperature", "top_p", "max_new_tokens", "seed"}),
    (["winrate", "A", "B"], "winrate", {"max_new_tokens", "temperature", "seed"}),
])
def test_cli_flags_come_from_the_declaration_with_the_named_defaults(argv, use, names):
    args = cli.build_parser().parse_args(argv)
    assert args.generation[0] == use and set(args.generation[1]) == names
    assert cli.generation_settings(args) == DEFAULTS[use]
    given = {"max_new_tokens": 7, "seed": 7, "temperature": 0.7, "top_p": 0.5}
    changed = cli.build_parser().parse_args(argv + [x for n in names for x in (f"--{n.replace('_', '-')}", str(given[n]))])
    assert cli.generation_settings(changed) == DEFAULTS[use].replace(**{n: given[n] for n in names})


def test_a_bad_flag_is_named_as_the_flag():
    args = cli.build_parser().parse_args(["chat", "RUN", "--prompt", "hi", "--max-new-tokens", "0"])
    with pytest.raises(cli.UserError, match=re.escape("--max-new-tokens must be at least 1, got 0")):
        cli.generation_settings(args)
    assert cli.main(["generate", "--prompts", "p.txt", "--temperature", "-1"]) == 2


def test_no_generation_number_is_set_outside_the_declaration():
    # Every place takes its numbers from studio.generation by name; a literal here would be an eleventh default.
    literal = re.compile(r"GenerationSettings\(|max_new_tokens\s*=\s*\d|\bgr\.\w+\(\s*(128|160|200)\b")
    found = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "studio").rglob("*.py") if p.name != "generation.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if literal.search(line) and not line.lstrip().startswith("#")]
    assert found == []
