"""The preference loop in the web app, for real on the embedded model: generate a pool from the baseline, label it
blind, judge it, train round 1 from it, and measure round 1's win rate over the baseline. First through the
app's API (gradio_client), then as a newcomer in Chromium with the keyboard. Ten prompts, two answers of at
most 16 tokens, two training steps."""

import json
import re
import time

import pytest
from gradio_client import Client

from studio.config import PRESETS_DIR
from studio.errors import AccessError, DataError
from studio.probes import read_prompts
from studio.pools import get_pool, human, list_pools
from studio.rounds import lineage
from studio.runs import get_run
from studio.ui.loop import prompts_from
from studio.winrate import measure

PROMPTS = ["What is the capital of France?", "Name a fruit that is yellow.", "How many legs does a spider have?",
           "What colour is the sky on a clear day?", "Say hello in Spanish.", "What do bees make?",
           "Name a planet in our solar system.", "What is 3 + 4?", "What do you call a baby cat?",
           "Which season comes after winter?"]
HELDOUT = ["What is the largest ocean?", "Name a musical instrument.", "What do cows drink?"]
RUBRIC = "name: brief\nrules:\n  - type: shorter\n    min_difference: 1\n"
# The Train tab's form, made small: what the next round takes from it (besides the pool as its data).
QUICK = dict(max_steps=2, max_length=64, lora_r=8, lora_alpha=16, lora_target_modules=["q_proj", "v_proj"],
             eval_fraction=0.0, eval_steps=0, save_steps=0, learning_rate=1e-3, warmup_steps=0,
             per_device_train_batch_size=2)
JOB_TIMEOUT = 400  # seconds: a CPU job on 2 busy cores
LIVE = re.compile("running|queued|loading|training")  # a job's state pill while it runs


def updated(output):
    """The value inside a component update (a handler returned gr.Dropdown(choices=…, value=…))."""
    return output.get("value") if isinstance(output, dict) and output.get("__type__") == "update" else output


def state_of(html: str) -> str:
    found = re.search(r'class="ds-state ([a-z_]+)"', html or "")
    return found.group(1) if found else ""


def follow(client, api: str, timeout: float = JOB_TIMEOUT) -> str:
    """Poll a box's job (its timer's endpoint) until it ends; its last status line."""
    deadline = time.time() + timeout
    while True:
        status = client.predict(api_name=f"/poll_{api}")[0]
        if state_of(status) not in ("queued", "running", "loading", "training", "saving"):
            return status
        assert time.time() < deadline, status
        time.sleep(0.5)


class Clock:
    """Wall and CPU seconds per phase, printed (run with -s to read them); the app runs in this process."""

    def __init__(self):
        self.last, self.cpu = time.time(), time.process_time()

    def __call__(self, phase: str) -> None:
        now, cpu = time.time(), time.process_time()
        print(f"\n{phase}: {now - self.last:.1f} s wall, {cpu - self.cpu:.1f} s CPU", end="")
        self.last, self.cpu = now, cpu


def test_prompts_come_from_pasted_lines_a_preset_a_data_file_or_an_upload(studio_home):
    convs, where = prompts_from("paste", "First?\n\n  Second?  \n", None, None, None)
    assert convs == [[{"role": "user", "content": "First?"}], [{"role": "user", "content": "Second?"}]]
    assert where == "2 pasted prompts"
    convs, where = prompts_from("preset", "", None, "twin-style-cpu", None)
    assert [c[0]["content"] for c in convs] == read_prompts(PRESETS_DIR / "data" / "twin-style.probes.txt")
    data = PRESETS_DIR / "data" / "twin-style.jsonl"
    convs, where = prompts_from("data", "", None, None, str(data))
    expected = list(dict.fromkeys(json.loads(line)["prompt"] for line in data.read_text().splitlines() if line.strip()))
    assert [c[-1]["content"] for c in convs] == expected and str(data) in where
    with pytest.raises(AccessError, match="outside the folders"):
        prompts_from("data", "", None, None, "/etc/hostname")
    with pytest.raises(DataError, match="not uploaded through the app"):
        prompts_from("file", "", str(data), None, None)
    with pytest.raises(DataError, match="Pick a preset"):
        prompts_from("preset", "", None, "no-such-preset", None)


@pytest.fixture(scope="module")
def app(launched_app):
    url, home = launched_app
    return Client(url, verbose=False), url, home


@pytest.mark.slow
def test_generate_label_judge_train_round_one_and_its_win_rate_through_the_api(app):
    client, _, home = app
    clock = Clock()
    # 1. Generate from the SFT baseline: ten pasted prompts, two answers each.
    status = client.predict("paste", "\n".join(PROMPTS), None, "cpu-quickstart", None, "embedded", 2, 0.8, 0.95, 16, 7,
                            api_name="/generate_pool")[0]
    assert state_of(status) in ("queued", "running", "done"), status
    status = follow(client, "generate")
    clock("generate 10 x 2 x 16 tokens")
    assert state_of(status) == "done", status
    pool = list_pools()[0]
    assert pool.id in status and "10 pairs" in status
    info = pool.info()
    assert (info["state"], info["done"], info["k"], info["round"]) == ("done", 10, 2, 1)
    assert info["settings"]["max_new_tokens"] == 16 and info["settings"]["seed"] == 7
    assert info["models"][0]["model"] == "embedded" and info["models"][0]["run"] is None
    assert [c["prompt"] for c in pool.candidates()] == PROMPTS
    assert all(len(c["answers"]) == 2 and all(a["text"] for a in c["answers"]) for c in pool.candidates())

    # 2. Label blind: the view names no model; A, then B, by turns.
    _, _, progress, prompt, a, b, _ = client.predict(pool.id, "tester", {}, api_name="/label_view")
    assert "0 of 10" in progress and "embedded" not in a + b
    for n in range(10):
        progress, *_ = client.predict(pool.id, "tester", api_name="/label_a" if n % 2 == 0 else "/label_b")
    assert "10 of 10" in progress
    me = human("tester")
    decided = get_pool(pool.id).decisions(me)
    assert len(decided) == 10 and {d.outcome for d in decided.values()} == {"win"}

    # A judge in both orders, as a job: every pair gets a decision with both margins.
    client.predict(pool.id, "embedded", "Which is better?\n{prompt}\nA: {a}\nB: {b}\nAnswer A or B.",
                   api_name="/judge_pool")
    status = follow(client, "judge")
    clock("judge 10 pairs in both orders")
    assert state_of(status) == "done" and "pairs won in both orders" in status, status
    judged = [e for e in get_pool(pool.id).events() if e["labeller"].startswith("judge:")]
    assert len(judged) == 10 and all(len(e["margins"]) == 2 for e in judged)
    assert all((e["outcome"] == "win") == ((e["margins"][0] > 0) == (e["margins"][1] < 0)) for e in judged)

    # 3. Round 1 from the person's decisions, with the Train tab's (small) settings; the slot is then busy.
    status = client.predict(pool_id=pool.id, labeller=me, include_original=False, start_from="base", parent=None,
                            preset="cpu-quickstart", **QUICK, api_name="/train_next_round")[0]
    assert "not started" not in status, status
    busy = client.predict("paste", "One more prompt.", None, "cpu-quickstart", None, "embedded", 2, 0.8, 0.95, 8, 0,
                          api_name="/generate_pool")[0]
    assert "not started" in busy and "already running" in busy
    status = follow(client, "next_round")
    clock("train round 1, 2 steps")
    assert state_of(status) == "done", status
    run_id = re.search(r"run <code>([^<]+)</code>", status).group(1)
    run = get_run(run_id)
    cfg = run.config()
    assert (cfg.round, cfg.init_adapter, cfg.max_steps, cfg.data) == (1, None, 2, str(pool.path / "preferences.jsonl"))
    rows = [json.loads(line) for line in (pool.path / "preferences.jsonl").read_text().splitlines()]
    assert rows and {r["labeller"] for r in rows} == {me} and {r["pool"] for r in rows} == {pool.id}
    assert run.read_json("data.json")["pairs"] == len(rows)
    assert [(c["round"], c["run"]) for c in lineage(run_id)] == [(0, None), (1, run_id)]
    client.predict(None, None, api_name="/runs")  # the Runs tab lists the new run (its selector's choices)
    line = client.predict(run_id, api_name="/run_lineage")
    assert "round 0 · SFT baseline (embedded)" in line and f"round 1 · `{run_id}` (pool `{pool.id}`)" in line

    # The pool's preference file is offered in the Data tab and checks as training data.
    summary = client.predict(str(pool.path / "preferences.jsonl"), api_name="/check_pool_file")[0]
    assert f"| {len(rows)} | {len(rows)} | 0 |" in summary and "now the training data" in summary

    # 4. Win rate in the Compare tab: picking round 1 as A offers its previous round (the baseline) as B.
    model_a, model_b, line, *_ = client.predict(run_id, run_id, api_name="/refresh_winrate")
    assert (updated(model_a), updated(model_b)) == (run_id, "baseline") and "round 1" in line
    client.predict(run_id, "baseline", "\n".join(HELDOUT), 16, "rubric", RUBRIC, "embedded", "", api_name="/winrate")
    status = follow(client, "winrate")
    clock("win rate on 3 prompts")
    assert state_of(status) == "done" and "Win rate" in status, status
    *_, result, table, _ = client.predict(run_id, "baseline", api_name="/refresh_winrate")
    heldout = next(p for p in list_pools() if p.info().get("kind") == "winrate")
    assert [m["run"] for m in heldout.info()["models"]] == [run_id, None]
    expected = measure(heldout, "rubric:brief", save=False)
    assert expected["wins"] + expected["ties"] + expected["losses"] == len(HELDOUT)
    low, high = expected["ci95"]
    assert f"Win rate of A over B: {expected['win_rate']:.3f}** (95% CI {low:.3f}–{high:.3f}" in result
    assert f"length-controlled: {expected['lc_win_rate']:.3f}" in result
    assert f"| A | {run_id} | {expected['mean_words_a']:.1f} |" in result
    assert [row[0] for row in table["data"]] == HELDOUT
    assert {row[3] for row in table["data"]} <= {"A wins", "B wins", "tie"}

    # Stop: a long generation ends after its current batch, and the pool keeps the prompts it answered.
    many = [f"Tell me one fact about the number {n}." for n in range(48)]
    client.predict("paste", "\n".join(many), None, "cpu-quickstart", None, "embedded", 2, 0.8, 0.95, 16, 0,
                   api_name="/generate_pool")
    assert "Stopping after the current batch" in client.predict(api_name="/stop_generate")
    status = follow(client, "generate")
    stopped = list_pools()[0]
    assert state_of(status) == "stopped" and "stopped early" in status and stopped.id in status
    assert stopped.info()["state"] == "stopped" and stopped.info()["done"] == len(stopped.candidates()) < len(many)


@pytest.mark.slow
@pytest.mark.browser
def test_a_newcomer_grows_round_one_in_the_browser_and_sees_its_win_rate(app, open_page):
    from playwright.sync_api import expect

    _, url, home = app
    clock = Clock()
    page = open_page(1400, 1000, timeout_ms=30_000)
    page.goto(url)

    # The Train tab's form is where a round's settings come from: a few steps, short pairs.
    page.get_by_role("tab", name="Train").click()
    for elem_id, value in (("max-steps", 2), ("max-length", 64), ("lora-r", 8), ("eval-fraction", 0)):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Tab")

    # 1. Generate a pool from the baseline.
    page.get_by_role("tab", name="Grow pairs").click()
    prompts = page.locator("#gen-prompts textarea")
    if not prompts.is_visible():
        page.locator("#gen-box").get_by_text("1 · Generate a pool").click()
    prompts.fill("\n".join(PROMPTS))
    tokens = page.locator("#gen-max-new-tokens input[type=number]")
    tokens.fill("16")
    tokens.press("Tab")
    before = {p.id for p in list_pools()}
    page.locator("#gen-start").click()
    gen_status = page.locator("#gen-status")  # until the click answers, it shows the latest job of any page
    expect(gen_status).to_contain_text(LIVE)
    expect(gen_status).to_contain_text("done", timeout=JOB_TIMEOUT * 1000)
    clock("browser: generate")
    pool = list_pools()[0]
    assert pool.id not in before
    expect(gen_status).to_contain_text(f"Pool {pool.id}: 10 prompts × 2 answers, 10 pairs")
    assert pool.info()["settings"]["max_new_tokens"] == 16 and len(pool.candidates()) == 10

    # 2. The new pool is picked: label 10 pairs blind with the keyboard.
    progress = page.locator("#label-progress")
    expect(page.locator("#label-pool input")).to_have_value(re.compile(re.escape(pool.id)))
    name = page.locator("#label-name textarea, #label-name input").first
    name.fill("newcomer")
    page.locator("#label-prompt").click()
    expect(progress).to_contain_text("0 of 10")
    expect(progress).to_contain_text("human:newcomer")
    for n in range(10):
        page.keyboard.press("1" if n % 2 == 0 else "2")
        expect(progress).to_contain_text(f"{n + 1} of 10")
    expect(page.locator("#label-prompt")).to_contain_text("All pairs labelled")
    me = human("newcomer")
    assert len(get_pool(pool.id).decisions(me)) == 10
    clock("browser: label 10 pairs")

    # 3. Train round 1 from them.
    page.locator("#round-start").click()
    round_status = page.locator("#round-status")
    expect(round_status).to_contain_text(LIVE)
    expect(round_status).to_contain_text("done", timeout=JOB_TIMEOUT * 1000)
    clock("browser: train round 1")
    run_id = re.search(r"run (\S+)", round_status.inner_text()).group(1)
    run = get_run(run_id)
    assert run.config().round == 1 and run.config().data == str(pool.path / "preferences.jsonl")
    assert run.config().max_steps == 2 and run.progress()["step"] == 2

    # 4. The Compare tab offers round 1 against the round before it (the baseline): its win rate.
    page.get_by_role("tab", name="Compare").click()
    # The tab's first visit also draws its charts and tables: on a runner shared with two other test workers the
    # choices arrived after Playwright's default 5 s once (a wait for content, not a latency bar).
    expect(page.locator("#winrate-a input")).to_have_value(re.compile(re.escape(run_id)), timeout=20_000)
    expect(page.locator("#winrate-lineage")).to_contain_text("round 1")
    expect(page.locator("#winrate-b input")).to_have_value(re.compile("SFT baseline"))
    page.locator("#winrate-prompts textarea").fill("\n".join(HELDOUT))
    tokens = page.locator("#winrate-max-new-tokens input[type=number]")
    tokens.fill("16")
    tokens.press("Tab")
    page.locator("#winrate-start").click()
    expect(page.locator("#winrate-status")).to_contain_text(LIVE)
    expect(page.locator("#winrate-status")).to_contain_text("done", timeout=JOB_TIMEOUT * 1000)
    result = page.locator("#winrate-result")
    expect(result).to_contain_text("Win rate of A over B")
    expect(result).to_contain_text("95% CI")
    expect(result).to_contain_text("length-controlled")
    clock("browser: win rate")
    heldout = next(p for p in list_pools() if p.info().get("kind") == "winrate")
    assert heldout.info()["models"][0]["run"] == run_id
    stored = heldout.info()["winrate"]["rubric:short-answers"]
    assert stored["pairs"] == len(HELDOUT) and 0 <= stored["ci95"][0] <= stored["win_rate"] <= stored["ci95"][1] <= 1
