"""The web app in a real browser (Playwright + Debian's chromium, headless): upload a preference file, train a
few steps with the charts filling live, reload the page mid-run, and chat with both panes answering.

Skipped only when playwright or /usr/bin/chromium is missing (pip install -r requirements-dev.txt;
apt-get install chromium). Training is real: the embedded SmolLM2-135M on CPU, 4 steps of 64 tokens.
"""

import json
import re
import statistics
import time

import pytest
import yaml

from studio.training import TrainingJob

expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt").expect

pytestmark = pytest.mark.browser
STEP_TIMEOUT_MS = 600_000  # a CPU step is seconds on an idle 2-core runner; generous for a loaded one

# Points in the first trace of a chart, read from the plotly graph div; -1 when the chart is not drawn.
POINTS_JS = """(id) => {
  const g = document.querySelector(`#${id} .js-plotly-plot`);
  if (!g || !g.data) return -1;
  return g.data.length && g.data[0].x ? g.data[0].x.length : 0;
}"""
# Records when each new point appears on the loss chart, to measure the trainer-to-chart latency.
WATCH_LOSS_JS = """() => {
  window.__lossSeen = [];
  setInterval(() => {
    const g = document.querySelector('#loss-chart .js-plotly-plot');
    const n = g && g.data && g.data.length && g.data[0].x ? g.data[0].x.length : 0;
    if (n > window.__lossSeen.length) for (let i = window.__lossSeen.length; i < n; i++) window.__lossSeen.push(Date.now() / 1000);
  }, 50);
}"""


@pytest.fixture(scope="module")
def app_url(launched_app):
    return launched_app


@pytest.fixture
def page(open_page):
    return open_page(1400, 1000)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")  # Gradio takes the value on change/blur


def points(page, elem_id: str) -> int:
    return page.evaluate(POINTS_JS, elem_id)


def wait_points(page, elem_id: str, at_least: int, timeout_ms: int = STEP_TIMEOUT_MS) -> None:
    page.wait_for_function(f"(n) => ({POINTS_JS})('{elem_id}') >= n", arg=at_least, timeout=timeout_ms,
                           polling=200)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


@pytest.mark.slow
def test_upload_train_reload_and_chat_in_a_browser(app_url, page, style_pairs):
    url, home = app_url
    timings = {}
    page.goto(url)

    # Data: the upload is checked by the engine and becomes the training data.
    t0 = time.time()
    page.locator("#data-upload input[type=file]").set_input_files(str(style_pairs))
    summary = page.locator("#data-summary")
    expect(summary).to_contain_text("prompt/chosen/rejected strings", timeout=180_000)
    expect(summary).to_contain_text("usable pairs")
    timings["upload check"] = time.time() - t0
    expect(page.locator("#data-preview")).to_contain_text("I like tea. It is simple.")

    # Train: a short run set from the form.
    open_tab(page, "Train")
    set_number(page, "max-steps", 4)
    set_number(page, "max-length", 64)
    set_number(page, "lora-r", 8)
    page.evaluate(WATCH_LOSS_JS)
    page.locator("#start-btn").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("run", timeout=30_000)
    expect(status).not_to_contain_text("not started")
    t0 = time.time()
    for chart in ("loss-chart", "margins-chart", "accuracy-chart"):
        wait_points(page, chart, 2)
    timings["start to 2 points"] = time.time() - t0
    job = TrainingJob.active()
    run_dir = job.run.path if job is not None else max((home / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert run_dir.parent == home / "runs"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"].startswith(str(home / "uploads"))  # the upload is the run's data
    assert (config["max_steps"], config["max_length"], config["lora_r"]) == (4, 64, 8)  # as typed in the form

    # Page actions answer while training runs: the Runs tab lists the live run; "Delete run…" asks for a
    # confirmation (a server round trip), and Cancel keeps the run.
    open_tab(page, "Runs")
    expect(page.locator("#runs-table")).to_contain_text(run_dir.name, timeout=10_000)
    answers = []
    for _ in range(3):
        t0 = time.time()
        page.locator("#runs-delete").click()
        expect(page.locator("#runs-delete-confirm")).to_be_visible(timeout=10_000)
        answers.append(time.time() - t0)
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator("#runs-delete-confirm")).to_be_hidden()
    timings["page action while training (median of 3)"] = statistics.median(answers)
    assert run_dir.is_dir()

    # Trainer-to-chart latency for the points seen so far.
    seen = page.evaluate("() => window.__lossSeen")
    logged = [json.loads(line)["time"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    latencies = [s - t for s, t in zip(seen, logged)]
    timings["metric-to-chart latency (max)"] = max(latencies)

    # Reload: the page finds the run (live or just finished) with its whole history.
    live = TrainingJob.active() is not None
    page.reload()
    open_tab(page, "Train")  # (a page loaded while a run is live opens on Train by itself)
    print(f"\nreloaded while the run was {'live' if live else 'already finished'}")
    expect(page.locator("#train-status")).to_contain_text(run_dir.name, timeout=30_000)
    wait_points(page, "loss-chart", 2, timeout_ms=30_000)
    expect(page.locator("#train-status")).to_contain_text("done", ignore_case=True, timeout=STEP_TIMEOUT_MS)
    assert points(page, "loss-chart") == 4

    # Chat: the finished run is offered; both panes answer one prompt.
    open_tab(page, "Chat")
    expect(page.locator("#chat-run input")).to_have_value(f"{run_dir.name} · done · step 4", timeout=30_000)
    page.get_by_text("Generation settings").click()
    set_number(page, "chat-max-new-tokens", 24)
    page.locator("#chat-input textarea").fill("Tell me one thing about tea.")
    t0 = time.time()
    page.locator("#chat-send").click()
    # The box is free for the next message at once (a message sent meanwhile waits its turn: tests/test_newcomer.py).
    expect(page.locator("#chat-input textarea")).to_have_value("", timeout=5_000)
    expect(page.locator("#chat-status")).to_contain_text("Answered", timeout=300_000)
    expect(page.locator("#chat-send")).to_be_enabled()
    timings["chat answer (incl. model load)"] = time.time() - t0
    for pane in ("#chat-baseline", "#chat-tuned"):
        bot = page.locator(f"{pane} .message.bot, {pane} [data-testid='bot']").last
        expect(bot).to_have_text(re.compile(r"\w{2,}"))  # words, not the "…" placeholder
    print("browser timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    # The targets are 2 s and 1 s; the bounds leave room for a loaded CI runner.
    assert timings["metric-to-chart latency (max)"] < 5 and timings["page action while training (median of 3)"] < 5


# Every distinct text the status line shows, recorded in the page as it changes (with the page's clock, in ms).
STATUS_LOG_JS = """() => {
  window.__statusSeen = [];
  window.__statusTimes = [];
  const el = document.querySelector('#train-status');
  const record = () => {
    const t = el.innerText.replace(/\\s+/g, ' ').trim();
    if (window.__statusSeen[window.__statusSeen.length - 1] !== t) {
      window.__statusSeen.push(t);
      window.__statusTimes.push([performance.now(), t]);
    }
  };
  new MutationObserver(record).observe(el, {subtree: true, childList: true, characterData: true});
  record();
}"""
TABS = ("Data", "Train", "Chat", "Runs", "Compare")


def upload_and_open_train(page, url: str, path) -> None:
    """A newcomer's first steps: open the app, upload a file in the Data tab, go to Train."""
    page.goto(url)
    page.locator("#data-upload input[type=file]").set_input_files(str(path))
    expect(page.locator("#data-summary")).to_contain_text("usable pairs", timeout=180_000)
    open_tab(page, "Train")


def data_field(page):
    return page.locator("#data textarea, #data input").first


@pytest.mark.slow
def test_every_phase_is_named_stop_says_so_the_page_goes_quiet_and_resume_finishes_the_run(app_url, page, style_pairs):
    url, home = app_url
    upload_and_open_train(page, url, style_pairs)
    set_number(page, "max-steps", 5)
    set_number(page, "eval-steps", 1)  # an evaluation after every step: the phase must say so
    set_number(page, "max-length", 64)
    set_number(page, "lora-r", 8)
    # All 12 pairs held out too, so an evaluation lasts long enough to be seen between two polls.
    eval_box = page.locator("#eval-data textarea, #eval-data input").first
    eval_box.fill(str(style_pairs))
    eval_box.press("Tab")
    page.evaluate(STATUS_LOG_JS)
    page.locator("#start-btn").click()
    status = page.locator("#train-status")
    try:
        page.wait_for_function(r"() => window.__statusSeen.some(t => /evaluating \d+\/\d+ held-out pairs/.test(t))",
                               timeout=STEP_TIMEOUT_MS, polling=100)
    except Exception:
        print("status lines seen:", page.evaluate("() => window.__statusSeen"))
        raise
    # A page opened while the run is going opens on the Train tab by itself (5 steps, each with 12 held-out pairs
    # to score: the run is still going).
    other = page.context.new_page()
    other.goto(url)
    expect(other.get_by_role("tab", name="Train")).to_have_attribute("aria-selected", "true", timeout=30_000)
    other.close()
    page.locator("#stop-btn").click()
    expect(status).to_contain_text("stopping", ignore_case=True, timeout=5_000)  # said at once, not a step later
    expect(status).to_contain_text("stopped", ignore_case=True, timeout=STEP_TIMEOUT_MS)
    seen = page.evaluate("() => window.__statusSeen")
    print("\nstatus lines seen:\n  " + "\n  ".join(seen))
    assert any("loading the model" in t or "preparing data" in t for t in seen), seen
    assert any(re.search(r"step \d+/5", t) and "training" in t.lower() for t in seen), seen
    expect(page.locator("#start-btn")).to_be_enabled(timeout=10_000)

    # An open page after the run: it only looks, rarely, for a run started elsewhere.
    page.wait_for_timeout(3_000)
    sent = []
    page.on("request", lambda r: sent.append((time.time(), r.method, r.url)))
    window = 30.0
    page.wait_for_timeout(window * 1000)
    print(f"idle page: {len(sent)} requests in {window:.0f} s: " + ", ".join(sorted({u.split('?')[0].rsplit('/', 2)[-1]
                                                                                   for _, _, u in sent})))
    assert len(sent) <= window / 3, sent  # at most one request every 3 s on average

    # Resume from the Runs tab: the stopped run goes on in its own folder to its last planned step.
    run_id = re.search(r"run (\S+)", seen[-1]).group(1)
    stopped_at = json.loads((home / "runs" / run_id / "status.json").read_text())["step"]
    open_tab(page, "Runs")
    page.get_by_role("button", name="↻ Refresh").last.click()
    page.locator("#runs-selected input").click()
    page.get_by_role("option", name=run_id).click()
    expect(page.locator("#runs-resume-note")).to_contain_text(f"step {stopped_at}", timeout=10_000)
    # Issue 23: Resume is said at once and the Train tab follows within seconds, although its timer has gone quiet.
    # Timed in the page, from the click to the Train tab's status leaving "stopped": not Playwright's own wait to
    # click the Train tab, which on a loaded runner is the renderer still drawing charts (5.6 s of 8.5 s once).
    page.evaluate("() => document.querySelector('#runs-resume').addEventListener('click', "
                  "() => { window.__resumeClicked = performance.now(); }, {once: true})")
    t0 = time.time()
    page.locator("#runs-resume").click()
    expect(page.locator("#runs-resume-note")).to_contain_text("Resuming", timeout=1_000)
    said = time.time() - t0
    expect(page.locator("#runs-resume-note")).not_to_contain_text("still", timeout=5_000)  # not "still loading"
    open_tab(page, "Train")
    expect(status).to_contain_text(run_id, timeout=5_000)
    page.wait_for_function("() => !/stopped/i.test(document.querySelector('#train-status').innerText)",
                           timeout=10_000, polling=50)
    followed = page.evaluate("() => (window.__statusTimes.find(([t, text]) => t > window.__resumeClicked && "
                             "!/stopped/i.test(text))[0] - window.__resumeClicked) / 1000")
    print(f"\nresume: said after {said:.2f} s, the Train tab left 'stopped' after {followed:.2f} s")
    assert followed < 5, followed  # the bar is a second after the click; 5 leaves room for a loaded runner
    expect(status).to_contain_text("done", ignore_case=True, timeout=STEP_TIMEOUT_MS)
    expect(status).to_contain_text("step 5/5")
    steps = [json.loads(line)["step"] for line in (home / "runs" / run_id / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5], steps  # each step logged once, across the stop and the resume


def test_events_that_show_no_progress_keep_their_status_on_one_hidden_flag(app_url):
    """The page re-reads every component whose status it keeps at each status change (see build.track_progress_on):
    a tick or a tab switch that shows nothing must not add its outputs, let alone the Tabs, to that set."""
    from studio.ui.build import build_app

    config = build_app().get_config_file()  # in the app's STUDIO_HOME (app_url)
    ids = {c["id"]: c for c in config["components"]}
    flag = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "ds-live")
    hidden = [d for d in config["dependencies"] if d["show_progress"] == "hidden"]
    chat = [d for d in hidden if any(ids[o]["type"] == "chatbot" for o in d["outputs"])]
    assert len(hidden) > 50 and chat  # the timers, tab switches and page loads, and the chat's streaming events
    for dep in hidden:
        assert dep["show_progress_on"] == (None if dep in chat else [flag]), dep
    assert not any(ids[o]["type"] == "tabs" for d in config["dependencies"] for o in d["outputs"])


def test_a_preset_keeps_the_data_the_user_chose(app_url, page, style_pairs):
    url, _ = app_url
    upload_and_open_train(page, url, style_pairs)
    uploaded = data_field(page).input_value()
    assert "uploads" in uploaded
    page.locator("#preset input").click()
    page.get_by_role("option", name=re.compile(r"^twin-style-cpu")).click()
    expect(page.get_by_text("Kept your training data").first).to_be_visible(timeout=10_000)
    assert page.get_by_text("Kept your training data").count() == 1  # said once, in the card, not in two toasts
    expect(page.locator("#max-length input[type=number]")).to_have_value("256")  # the preset did apply
    assert data_field(page).input_value() == uploaded


def test_on_a_phone_start_is_on_the_first_screen_and_the_chat_panes_stay_side_by_side(app_url, open_page):
    url, _ = app_url
    page = open_page(390, 844, is_mobile=True, has_touch=True)
    page.goto(url)
    for name in TABS:  # every tab on the bar, none hidden behind an overflow menu
        expect(page.get_by_role("tab", name=name)).to_be_visible()
    open_tab(page, "Train")
    for elem in ("#start-btn", "#train-status"):
        box = page.locator(elem).bounding_box()
        assert box["y"] + box["height"] <= 844, (elem, box)
    chart = page.locator("#loss-chart").bounding_box()
    assert chart["width"] >= 300, chart  # full width, not half of a row
    open_tab(page, "Chat")
    left, right = (page.locator(p).bounding_box() for p in ("#chat-baseline", "#chat-tuned"))
    assert abs(left["y"] - right["y"]) < 4 and left["x"] + left["width"] <= right["x"] + 1, (left, right)
