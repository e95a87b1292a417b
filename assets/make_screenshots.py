"""Screenshots of each tab of the web app, from a real run, and the UI timings measured on the way.

    python assets/make_screenshots.py                       # writes assets/screenshot-{data,train,chat,runs,compare}.png
                                                            # and screenshot-<tab>-phone.png (390x844, first screen)
    python assets/make_screenshots.py --steps 20 --model-cache studio_home/models

Needs playwright (pip install -r requirements-dev.txt) and a chromium at /usr/bin/chromium. It runs the
app in this process on a fresh STUDIO_HOME (the model cache is reused when --model-cache names one),
trains on presets/data/twin-style.jsonl, chats with the result, runs a two-run sweep, and prints:
  - metric-to-chart latency: from the trainer logging a step (metrics.jsonl "time") to its point being on
    the loss chart in the browser;
  - page-action latency while training: a click on "Delete run…" until the server's confirmation box shows.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
DATA = ROOT / "presets" / "data" / "twin-style.jsonl"
PROBES = ["Write a paragraph to introduce supervised fine-tuning.", "How should I start learning to cook?",
          "Any tips for writing a cover letter?"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WATCH_LOSS_JS = """() => {
  window.__lossSeen = [];
  setInterval(() => {
    const g = document.querySelector('#loss-chart .js-plotly-plot');
    const n = g && g.data && g.data.length && g.data[0].x ? g.data[0].x.length : 0;
    for (let i = window.__lossSeen.length; i < n; i++) window.__lossSeen.push(Date.now() / 1000);
  }, 50);
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


PHONE = {"width": 390, "height": 844}


def phone_shot(browser, url: str, tab: str, path: Path, chat: str | None = None) -> None:
    """The first screen of a tab on a phone, in a fresh page (what a phone sees after a reload)."""
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.get_by_role("tab", name=tab).click()
    page.wait_for_timeout(1500)
    if chat:
        page.locator("#chat-input textarea").fill(chat)
        page.locator("#chat-send").click()
        page.locator("#chat-send").wait_for(state="visible")
        page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Answered')",
                               timeout=600_000)
        page.locator("#chat-panes").scroll_into_view_if_needed()
    page.screenshot(path=str(path))
    context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="training steps (default 16)")
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--model-cache", default=os.environ.get("STUDIO_TEST_MODEL_CACHE", "studio_home/models"),
                        help="a folder holding the converted embedded model, reused when present")
    parser.add_argument("--out", default=str(ASSETS), help="where the PNGs go")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="dpo-studio-shots-"))
    cache = Path(args.model_cache).resolve()
    if cache.is_dir():
        (home / "models").symlink_to(cache, target_is_directory=True)
    os.environ["STUDIO_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import expect, sync_playwright

    from studio.ui import build_app, launch_options

    demo = build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **launch_options())
    out, timings = Path(args.out), {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
            page.set_default_timeout(120_000)
            page.goto(url)

            page.locator("#data-upload input[type=file]").set_input_files(str(DATA))
            expect(page.locator("#data-summary")).to_contain_text("usable pairs", timeout=300_000)
            page.wait_for_timeout(800)
            page.screenshot(path=str(out / "screenshot-data.png"), full_page=True)

            page.get_by_role("tab", name="Train").click()
            set_number(page, "max-steps", args.steps)
            set_number(page, "max-length", args.max_length)
            set_number(page, "eval-steps", max(2, args.steps // 4))
            page.evaluate(WATCH_LOSS_JS)
            page.locator("#start-btn").click()
            status = page.locator("#train-status")
            page.wait_for_function("() => { const g = document.querySelector('#loss-chart .js-plotly-plot');"
                                   " return g && g.data && g.data.length && g.data[0].x.length >= 3 }",
                                   timeout=900_000, polling=200)
            # A page action while training: "Delete run…" asks the server, which shows the confirmation; Cancel.
            page.get_by_role("tab", name="Runs").click()
            actions = []
            for _ in range(5):
                t0 = time.time()
                page.locator("#runs-delete").click()
                page.locator("#runs-delete-confirm").wait_for(state="visible", timeout=30_000)
                actions.append(time.time() - t0)
                page.get_by_role("button", name="Cancel").click()
                page.locator("#runs-delete-confirm").wait_for(state="hidden", timeout=30_000)
                page.wait_for_timeout(700)
            timings["page action while training (s)"] = [round(a, 2) for a in actions]
            page.get_by_role("tab", name="Train").click()
            expect(status).to_contain_text("done", ignore_case=True, timeout=1_800_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "screenshot-train.png"), full_page=True)

            run_dir = max((home / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
            logged = [row["time"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                      if "loss" in row]
            seen = page.evaluate("() => window.__lossSeen")
            latencies = [s - t for s, t in zip(seen, logged)]
            timings["metric-to-chart latency (s)"] = {"median": round(statistics.median(latencies), 2),
                                                      "max": round(max(latencies), 2), "points": len(latencies)}

            page.get_by_role("tab", name="Chat").click()
            expect(page.locator("#chat-run input")).to_have_value(f"{run_dir.name} · done · step {args.steps}")
            page.get_by_text("Generation settings").click()
            set_number(page, "chat-max-new-tokens", 96)
            page.locator("#chat-input textarea").fill("Write a paragraph to introduce supervised fine-tuning.")
            t0 = time.time()
            page.locator("#chat-send").click()
            expect(page.locator("#chat-status")).to_contain_text("Answered", timeout=600_000)
            timings["chat answer incl. first model load (s)"] = round(time.time() - t0, 1)
            page.get_by_text("Generation settings").click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "screenshot-chat.png"), full_page=True)

            page.get_by_role("tab", name="Runs").click()
            page.get_by_role("button", name="↻ Refresh").last.click()
            expect(page.locator("#runs-table")).to_contain_text("done")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "screenshot-runs.png"), full_page=True)

            # Compare: a two-run learning-rate sweep (5e-5 and 2e-4, the tab's default values) with the
            # Train tab's settings, a short probe grid, then the comparison it opens.
            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-prompts textarea").fill("\n".join(PROBES))
            set_number(page, "compare-max-new-tokens", 48)
            t0 = time.time()
            page.locator("#sweep-start").click()
            expect(page.locator("#sweep-status")).to_contain_text("done", ignore_case=True, timeout=3_600_000)
            expect(page.locator("#compare-grid")).to_contain_text("SFT baseline", timeout=120_000)
            timings["two-run sweep incl. evaluation and grid (s)"] = round(time.time() - t0, 1)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "screenshot-compare.png"), full_page=True)
            for tab in ("Data", "Train", "Runs", "Compare"):
                phone_shot(browser, url, tab, out / f"screenshot-{tab.lower()}-phone.png")
            phone_shot(browser, url, "Chat", out / "screenshot-chat-phone.png",
                       chat="Any tips for writing a cover letter?")
            browser.close()
    finally:
        demo.close()
    print(json.dumps(timings, indent=2))
    print(f"screenshots in {out}; run folder {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
