"""The self-improvement loop on the embedded model, for real: sample a pool, judge it in both orders, train the
next round from a labelled pool, continue an adapter, and the CLI's generate / label / winrate. Few prompts,
few tokens, few steps."""

import json

import pytest
import torch

from studio.chat import ChatEngine, GenerationSettings
from studio.config import RunConfig, field_names
from studio.errors import ConfigError
from studio.generate import generate_pool
from studio.label import Judge, fill_template, judge_pool, label_with_rubric, load_rubric
from studio.pools import create_pool, get_pool
from studio.rounds import next_round_config
from studio.training import TrainingJob

pytestmark = pytest.mark.slow  # every test generates or trains
PROMPTS = ["Describe your ideal weekend.", "Tell me about the sea."]
SHORT_RUBRIC = "name: brief\nrules:\n  - type: shorter\n    min_difference: 2\n"


@pytest.fixture(scope="module")
def engine(module_home):
    # fp32, as the judge wants; generation runs on the same copy.
    return ChatEngine("embedded", dtype=torch.float32)


def test_generate_samples_k_different_answers_reproducibly_into_a_pool(engine):
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, top_p=1.0, seed=3)
    seen = []
    pool = generate_pool("embedded", None, PROMPTS, k=2, settings=settings, engine=engine,
                         progress=lambda *a: seen.append(a), batch_size=4)
    info = pool.info()
    assert info["state"] == "done" and info["done"] == 2 and info["k"] == 2 and info["round"] == 1
    assert info["models"][0]["model"] == "embedded" and info["settings"]["temperature"] == 1.0
    assert seen[0] == ("generating", 0, 2) and seen[-1] == ("generating", 2, 2)
    candidates = pool.candidates()
    assert [c["prompt"] for c in candidates] == PROMPTS
    texts = [[a["text"] for a in c["answers"]] for c in candidates]
    assert all(t.strip() for pair in texts for t in pair)
    assert any(a != b for a, b in texts), texts  # sampled rows differ
    assert all(isinstance(a["finished"], bool) for c in candidates for a in c["answers"])
    assert len(pool.pairs()) == 2

    again = generate_pool("embedded", None, PROMPTS, k=2, settings=settings, engine=engine, batch_size=4)
    assert [[a["text"] for a in c["answers"]] for c in again.candidates()] == texts  # same seed, same pool
    assert again.id != pool.id

    # A stop between batches keeps what is done; the pool says it stopped.
    calls = []
    stopped = generate_pool("embedded", None, PROMPTS, k=2, settings=settings, engine=engine, batch_size=2,
                            progress=lambda *a: calls.append(a), should_stop=lambda: len(calls) >= 2)
    assert stopped.info()["state"] == "stopped" and len(stopped.candidates()) == 1

    with pytest.raises(ConfigError, match="k .answers per prompt. must be 2 to 4"):
        generate_pool("embedded", None, PROMPTS, k=5, settings=settings, engine=engine)
    with pytest.raises(ConfigError, match="temperature must be above 0"):
        generate_pool("embedded", None, PROMPTS, k=2, settings=GenerationSettings(temperature=0), engine=engine)


def hand_pool(rows):
    pool = create_pool("generate", "hand", models=[{"name": "SFT baseline (embedded)", "model": "embedded"}],
                       base_model="embedded", round=1, seed=0)
    for prompt, answers in rows:
        pool.add_candidate([{"role": "user", "content": prompt}],
                           [{"text": t, "name": "SFT baseline (embedded)", "model": "embedded"} for t in answers])
    pool.update(state="done", done=len(rows))
    return pool


def test_the_judge_scores_both_orders_and_counts_a_pair_only_when_they_agree(engine):
    pool = hand_pool([("What is the capital of France?", ["Paris.", "I do not know, maybe Berlin or Rome."]),
                      ("What is 2 + 2?", ["4.", "2 + 2 is 5."])])
    judge = Judge("embedded", engine=engine)
    counts = judge_pool(pool, judge)
    assert counts["judged"] == 2 and counts["win"] + counts["tie"] == 2
    events = pool.events()
    candidates = pool.candidates()
    for event, pair in zip(events, pool.pairs()):
        c = candidates[pair.candidate]
        x, y = c["answers"][pair.first]["text"], c["answers"][pair.second]["text"]
        m1, m2 = event["margins"]
        # Each margin is the judge's log P("A") - log P("B") on its own order, recomputed here in one forward pass.
        for (a, b), expected in (((x, y), m1), ((y, x), m2)):
            ids = engine.prompt_ids([{"role": "user", "content": fill_template(judge.template, c["prompt"], a, b)}])
            with torch.no_grad():
                logps = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
            assert abs((logps[judge.ids[0]] - logps[judge.ids[1]]).item() - expected) < 1e-3
        assert m1 != m2  # the swapped prompt is a different question to the judge
        agree = (m1 > 0) == (m2 < 0)
        assert event["outcome"] == ("win" if agree else "tie")
        if agree:
            assert event["winner"] == (pair.first if m1 > 0 else pair.second)
    # Judging again resumes: nothing is judged twice.
    assert judge_pool(pool, judge)["judged"] == 0


def quick_base(**changes) -> RunConfig:
    base = dict(model="embedded", data="", max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3, beta=0.1,
                lora_r=8, lora_alpha=16, max_length=96, eval_fraction=0.0, eval_steps=0, save_steps=0,
                lora_target_modules=["q_proj", "v_proj"])
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def round_one(module_home):
    """A pool labelled by a rubric and the round-1 run trained on it."""
    rows = [(f"Tell me about {t}.", [f"{t.title()} is nice.",
                                     f"Well, {t} is a very broad and multifaceted topic with many considerations."])
            for t in ("tea", "rain", "maps", "bread", "music", "bikes")]
    pool = hand_pool(rows)
    label_with_rubric(pool, load_rubric(SHORT_RUBRIC))
    cfg = next_round_config(pool, quick_base(), labeller="rubric:brief")
    job = TrainingJob(cfg, preset="round-test").start()
    job.wait()
    return pool, job


def test_the_next_round_trains_on_the_labelled_pool(round_one):
    pool, job = round_one
    assert job.state == "done", job.error
    cfg = job.run.config()
    assert cfg.data == str(pool.path / "preferences.jsonl") and cfg.model == "embedded"
    data = job.run.read_json("data.json")
    assert data["pairs"] == 6 and data["train_pairs"] == 6 and data["layout"] == "prompt/chosen/rejected strings"
    if "round" in field_names():
        assert cfg.round == 1
    assert (job.run.adapter_dir / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (pool.path / "preferences.jsonl").read_text().splitlines()]
    assert all(r["chosen"].endswith("is nice.") and r["labeller"] == "rubric:brief" for r in rows)


def test_a_run_reads_back_its_lineage(round_one):
    from studio.rounds import lineage

    pool, job = round_one
    chain = lineage(job.run.id)
    assert [(c["round"], c["run"]) for c in chain] == [(0, None), (1, job.run.id)]
    assert chain[1]["pool"] == pool.id and chain[0]["model"] == "embedded"


def test_the_next_round_can_take_the_original_data_too(round_one, style_pairs):
    pool, _ = round_one
    cfg = next_round_config(pool, quick_base(data=str(style_pairs)), include_original=True)
    from studio.data import load_preferences

    combined = load_preferences(cfg.data)
    assert combined.report.pairs == 6 + 12 and not combined.report.dropped


def test_continuing_an_adapter_trains_it_against_a_frozen_copy_of_itself(round_one):
    from safetensors.torch import load_file

    from studio.models import load_adapter_for_training
    from studio.training_data import load_run_data, to_trl
    from studio.training import build_trainer

    pool, job = round_one
    if "init_adapter" in field_names():
        cfg = next_round_config(pool, quick_base(), continue_from=job.run.id)
        assert cfg.init_adapter == str(job.run.adapter_dir) and cfg.round == 2
    else:  # until RunConfig gains init_adapter, the engine says it cannot continue yet
        with pytest.raises(ConfigError, match="init_adapter"):
            next_round_config(pool, quick_base(), continue_from=job.run.id)
        cfg = next_round_config(pool, quick_base())
    cfg = cfg.replace(optim="adamw_torch", bf16=False, gradient_checkpointing=False, max_steps=2)
    loaded = load_adapter_for_training(cfg, job.run.adapter_dir)
    assert loaded.peft_config is None and loaded.backend["init_adapter"] == str(job.run.adapter_dir)
    saved = load_file(str(job.run.adapter_dir / "adapter_model.safetensors"))
    start = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if ".default." in n}
    assert start and all(p.requires_grad for n, p in loaded.model.named_parameters() if ".default." in n)
    key = next(iter(saved))
    assert torch.equal(start[key.replace(".weight", ".default.weight")], saved[key])  # starts from round 1
    _, train, _ = load_run_data(cfg, loaded.tokenizer)
    trainer = build_trainer(cfg, loaded, to_trl(train, cfg), None, output_dir=job.run.path / "continue-check")
    trainer.train()
    model = trainer.model
    assert "ref" in model.peft_config  # TRL's frozen copy: the reference of this round is round 1
    params = dict(model.named_parameters())
    moved = [n for n in start if not torch.equal(params[n].detach(), start[n])]
    assert moved, "continuing did not train the adapter"
    assert all(torch.equal(params[n.replace(".default.", ".ref.")].detach(), start[n]) for n in start)


def test_cli_generate_label_and_winrate(round_one, tmp_path, capsys):
    from studio.cli import main

    _, job = round_one
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\nName a fruit.\nName a colour.\n")
    rubric = tmp_path / "brief.yaml"
    rubric.write_text(SHORT_RUBRIC)
    out = tmp_path / "pool"
    assert main(["generate", "--model", "embedded", "--prompts", str(prompts), "--k", "2", "--max-new-tokens", "6",
                 "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"] == "done" and info["prompts"] == 2 and (out / "candidates.jsonl").is_file()

    assert main(["label", str(out), "--rubric", str(rubric), "--json"]) == 0
    labelled = json.loads(capsys.readouterr().out)
    assert labelled["labeller"] == "rubric:brief" and labelled["win"] + labelled["tie"] == 2
    assert get_pool(out).decisions("rubric:brief")

    assert main(["winrate", job.run.id, "baseline", "--prompts", str(prompts), "--rubric", str(rubric),
                 "--max-new-tokens", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_a"] == job.run.id and result["model_b"] == "SFT baseline (embedded)"
    assert result["pairs"] == 2 and result["wins"] + result["ties"] + result["losses"] == 2
    low, high = result["ci95"]
    assert 0 <= low <= result["win_rate"] <= high <= 1 and "lc_win_rate" in result

    assert main(["generate", "--prompts", str(prompts), "--k", "5"]) == 2
    assert "k (answers per prompt) must be 2 to 4" in capsys.readouterr().err
