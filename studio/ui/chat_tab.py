"""Chat tab: the SFT baseline (adapter off) and the DPO model (a run's adapter on), side by side.

Both panes stream from one batched `generate` on one copy of the base weights (`studio.chat`), one
generator yielding both panes each token. Each pane keeps its own history, so a conversation goes on
over several turns in both. The model loads on the first message, not when the app starts.
"""

from __future__ import annotations

import time

import gradio as gr

from studio.access import require_reader
from studio.errors import PromptError, StudioError
from studio.config import load_preset, preset_names
from studio.models import ModelError, display_name
from studio.probes import HANDBOOK_PROBE
from studio.prompt_budget import budget_line, check_prompt, context_length, prompt_tokens
from studio.runs import LIVE_STATES, get_run, list_runs

from .common import Services, user_errors, user_message
from .form import generation_from_widgets, generation_widget

THINKING = "…"
CUT_MARK = "\n\n*[cut at "  # ends an answer stopped by the token limit, not by the model
FENCE = "```"


def run_choices() -> list[tuple[str, str]]:
    """Runs that have a saved adapter and are not training, newest first, as (label, run id)."""
    choices = []
    for run in list_runs():
        status = run.status()
        if run.has_adapter and status.get("state") not in LIVE_STATES:
            choices.append((f"{run.id} · {status.get('state')} · step {status.get('step')}", run.id))
    return choices


def sample_prompts() -> list[str]:
    prompts = [HANDBOOK_PROBE]
    for name in preset_names():
        for prompt in load_preset(name).card.get("sample_prompts") or []:
            if prompt not in prompts:
                prompts.append(prompt)
    return prompts


def text_of(content) -> str:
    """A Chatbot message's content as plain text: Gradio 6 may hand back a list of typed blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(block) for block in content)
    return "" if content is None else str(content)


def as_messages(history) -> list[dict]:
    """Chatbot history -> [{role, content}] for the chat template (placeholders and empty turns dropped)."""
    messages = []
    for item in history or []:
        role = item.get("role") if isinstance(item, dict) else getattr(item, "role", None)
        content = text_of(item.get("content") if isinstance(item, dict) else getattr(item, "content", ""))
        if role in ("user", "assistant", "system") and content and content != THINKING:
            messages.append({"role": role, "content": content})
    return messages


def with_cut_mark(text: str, max_new_tokens: int) -> str:
    """The answer and the mark that the token limit cut it; an answer cut inside a code block gets the block closed
    first, so the mark reads as text, not as code."""
    close = f"\n{FENCE}" if text.count(FENCE) % 2 else ""
    return f"{text}{close}{CUT_MARK}{int(max_new_tokens)} tokens]*"


def for_model(messages: list[dict]) -> list[dict]:
    """The conversation as the model should see it: the cut marks are for the reader, not for its next turn."""
    out = []
    for m in messages:
        text, cut, _ = m["content"].partition(CUT_MARK)
        if cut and text.endswith(f"\n{FENCE}") and text[:-len(FENCE) - 1].count(FENCE) % 2:
            text = text[:-len(FENCE) - 1]  # the fence with_cut_mark added, not the model's
        out.append({**m, "content": text})
    return out


def precision_note(precision: str) -> str:
    """Said where it matters: a 16-bit chat may part from an exported model's answer after a few tokens."""
    if precision == "float32":
        return "fp32"
    return (f"{precision}, both panes in one batch: fast, but where two next words are nearly tied it may part "
            f"from an exported model's answer after a few tokens. Tick *Reference answer* to check an export")


class ChatTab:
    def __init__(self, services: Services):
        self.services = services
        with gr.Tab("Chat", id="chat") as self.tab:
            with gr.Row(equal_height=True):
                choices = run_choices()
                self.run = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Run",
                                       info="finished runs with a saved adapter, newest first", scale=5,
                                       elem_id="chat-run")
                self.refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=100)
            self.status = gr.Markdown("Pick a run and send a prompt: the base model loads on the first message.",
                                      elem_id="chat-status", elem_classes="ds-caption")
            # The conversation as the server holds it: a message sent while an answer streams waits in the queue
            # and is answered next, on the conversation as it then is (not as it was when it was typed).
            self.history = gr.State({"baseline": [], "tuned": []})
            # Messages sent from the page and not yet answered, and how many the page ever sent (mutated in place).
            self.waiting = gr.State({"queue": [], "sent": 0})
            with gr.Row(equal_height=True, elem_id="chat-panes"):
                self.baseline = gr.Chatbot(label="SFT baseline (adapter off)", elem_id="chat-baseline", height=440,
                                           feedback_options=None, buttons=["copy"])
                self.tuned = gr.Chatbot(label="DPO (the run's adapter on)", elem_id="chat-tuned", height=440,
                                        feedback_options=None, buttons=["copy"])
            with gr.Row(equal_height=True):
                self.input = gr.Textbox(placeholder="Ask both models…", show_label=False, scale=6, lines=1,
                                        elem_id="chat-input", autofocus=False, label="Prompt")
                self.send_btn = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="chat-send")
                self.clear_btn = gr.Button("Clear", scale=1, min_width=90, elem_id="chat-clear")
            self.budget = gr.Markdown("", elem_id="chat-budget", elem_classes="ds-caption")
            gr.Examples([[p] for p in sample_prompts()], inputs=self.input, label="Sample prompts (click one)")
            with gr.Accordion("Generation settings", open=False):
                with gr.Row():
                    # the Chat tab's defaults (studio.generation.DEFAULTS["chat_tab"]) on sliders
                    self.max_new_tokens = generation_widget("max_new_tokens", "chat_tab", "chat", slider=(16, 1024, 8))
                    self.temperature = generation_widget("temperature", "chat_tab", "chat", slider=(0, 1.5, 0.05))
                    self.top_p = generation_widget("top_p", "chat_tab", "chat", slider=(0.05, 1, 0.05))
                    self.repetition_penalty = generation_widget("repetition_penalty", "chat_tab", "chat",
                                                                slider=(1.0, 1.5, 0.05))
                self.reference = gr.Checkbox(
                    False, label="Reference answer (fp32, one answer at a time)", elem_id="chat-reference",
                    info="slower; greedy, it gives token for token what the merged export gives with the same "
                         "settings, so you can check an export against the studio")
        self._wire()

    def _wire(self) -> None:
        # Nothing is lost: each Send moves the box's text into this session's queue at once (accept, no queue: the
        # box is free for the next message); then one answering event drains the queue in order, one model generate
        # at a time. A Send while it runs is picked up by the running drain, or by the next one ("always_last": a
        # second event instance would stream into the same outputs). Its own concurrency group, so the training
        # timer and the other tabs' events keep answering meanwhile.
        accepted = gr.on([self.send_btn.click, self.input.submit], self.accept, inputs=[self.input, self.waiting],
                         outputs=[self.input, self.status], api_visibility="private", show_progress="hidden",
                         queue=False, trigger_mode="multiple")
        answer = accepted.then(self.send,
                               inputs=[self.input, self.run, self.history, self.max_new_tokens, self.temperature,
                                       self.top_p, self.repetition_penalty, self.reference, self.waiting],
                               outputs=[self.baseline, self.tuned, self.status, self.history], api_name="chat",
                               concurrency_limit=1, concurrency_id="chat", show_progress="hidden",
                               trigger_mode="always_last")
        self.clear_btn.click(self.clear, inputs=self.waiting,
                             outputs=[self.baseline, self.tuned, self.status, self.history, self.budget],
                             api_name="clear_chat", concurrency_limit=None, cancels=[answer])
        gr.on([self.refresh_btn.click, self.tab.select], self.refresh, inputs=self.run, outputs=self.run,
              api_name="chat_runs", concurrency_limit=None, show_progress="hidden")
        self.run.change(self.pane_label, inputs=self.run, outputs=self.tuned, api_visibility="private",
                        show_progress="hidden")
        gr.on([self.input.change, self.max_new_tokens.release], self.measure,
              inputs=[self.input, self.run, self.history, self.max_new_tokens], outputs=self.budget,
              api_visibility="private", show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")

    def connect(self, train) -> None:
        train.runs_changed.change(self.refresh, inputs=self.run, outputs=self.run, api_visibility="private",
                                  show_progress="hidden", concurrency_limit=None)

    # --- handlers ---
    def refresh(self, current: str | None):
        choices = run_choices()
        ids = [run_id for _, run_id in choices]
        return gr.Dropdown(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    def pane_label(self, run_id: str | None):
        return gr.Chatbot(label=f"DPO · {run_id}" if run_id else "DPO (the run's adapter on)")

    def clear(self, waiting: dict):
        waiting["queue"].clear()
        return [], [], "", {"baseline": [], "tuned": []}, ""

    def accept(self, message: str, waiting: dict):
        """At once, on each Send: empty the box for the next message, and say that this one waits, or why not."""
        message = (message or "").strip()
        if not message:
            return gr.skip(), "Type a prompt first: the box is empty, so nothing was sent."
        queue = waiting["queue"]
        queue.append(message)
        waiting["sent"] += 1
        if len(queue) == 1:
            return "", "Sending…"
        short = message if len(message) <= 60 else message[:57] + "…"
        return "", (f"Queued: “{short}” is answered when the answer in progress ends"
                    + (f" ({len(queue) - 1} messages wait)." if len(queue) > 2 else "."))

    def _model_of(self, run_id: str | None) -> str | None:
        try:
            return get_run(run_id).config().model if run_id else None
        except (StudioError, OSError):  # a deleted or unreadable run: the send says so
            return None

    def measure(self, message, run_id, history, max_new_tokens):
        """The prompt's size against the model's context, shown as it is typed (the tokenizer only, no model)."""
        message = (message or "").strip()
        model = self._model_of(run_id)
        if not message or model is None:
            return ""
        try:
            tokenizer = self.services.tokenizer(model)
            messages = for_model(as_messages((history or {}).get("tuned"))) + [{"role": "user", "content": message}]
            return budget_line(prompt_tokens(tokenizer, messages), int(max_new_tokens), context_length(model))
        except (StudioError, OSError) as e:  # a count is a courtesy: a model that cannot be read is said at Send
            return user_message(e) or ""

    @user_errors("Cannot chat", lambda self, message: {self.status: message})
    def send(self, message, run_id, history, max_new_tokens, temperature, top_p, repetition_penalty=1.0,
             reference=False, waiting=None, request: gr.Request = None):
        """Answer every message waiting in the session's queue, oldest first (from the page), or `message` (from
        the API, which sends no queue)."""
        waiting = waiting if waiting is not None else {"queue": [], "sent": 0}
        history = history or {"baseline": [], "tuned": []}
        if not waiting["sent"]:  # an API call: its argument is the message
            waiting["queue"].append(message or "")
        if not waiting["queue"]:  # a drain that found the queue emptied by the one before: change nothing
            yield {self.status: gr.skip()}  # (a generator that yields nothing would blank every output)
            return
        while waiting["queue"]:
            message = waiting["queue"].pop(0)
            yield from self._answer(message, run_id, history, max_new_tokens, temperature, top_p, repetition_penalty,
                                    reference, waiting["queue"], request)

    def _answer(self, message, run_id, history, max_new_tokens, temperature, top_p, repetition_penalty, reference,
                waiting: list, request):
        """One message answered by both panes; `history` (the session's) is updated in place when it is done."""
        message = (message or "").strip()
        if not message:
            yield {self.status: "Type a prompt first: the box is empty, so nothing was sent."}
            return
        require_reader(request, "chat")
        if not run_id:
            problem = "No run to chat with yet: train one in the Train tab (or pick one above)."
            gr.Warning(problem)
            yield {self.status: problem}
            return
        run = get_run(run_id)  # a run deleted meanwhile is the user's warning; an unreadable one a logged bug
        model = run.config().model
        user = {"role": "user", "content": message}
        base_history = as_messages(history.get("baseline")) + [user]
        tuned_history = as_messages(history.get("tuned")) + [user]
        tokens = None
        try:  # before any model is loaded or any token generated
            tokens = max(prompt_tokens(self.services.tokenizer(model), for_model(h))
                         for h in (base_history, tuned_history))
            check_prompt(tokens, int(max_new_tokens), context_length(model))
        except PromptError as e:
            gr.Warning(str(e), title="Prompt too long")
            yield {self.status: f"⚠️ {e}"}
            return
        except StudioError:  # the model cannot be resolved: said below, where it loads
            pass
        dtype = None
        if reference:
            import torch
            dtype = torch.float32
        loading = not self.services.chat.loaded(model, dtype)
        yield {self.status: f"Loading {display_name(model)} (first chat only)…" if loading else "Answering…",
               self.baseline: base_history + [{"role": "assistant", "content": THINKING}],
               self.tuned: tuned_history + [{"role": "assistant", "content": THINKING}]}
        started = time.time()
        try:
            engine = self.services.chat.get(model, dtype)
            adapter = engine.attach_run(run)
        except (ModelError, FileNotFoundError) as e:
            yield {self.status: f"⚠️ {e}", self.baseline: base_history, self.tuned: tuned_history}
            return
        first_token, base_text, tuned_text, finished = None, "", "", []
        settings = generation_from_widgets("chat_tab", max_new_tokens=int(max_new_tokens),
                                           temperature=float(temperature), top_p=float(top_p),
                                           repetition_penalty=float(repetition_penalty or 1.0))
        for base_text, tuned_text in engine.stream_pair(for_model(base_history), for_model(tuned_history), adapter,
                                                        settings, finished, one_row=bool(reference)):
            update = {self.baseline: base_history + [{"role": "assistant", "content": base_text or THINKING}],
                      self.tuned: tuned_history + [{"role": "assistant", "content": tuned_text or THINKING}]}
            if first_token is None:
                first_token = time.time()
                update[self.status] = "Answering…"  # the loading message goes as soon as tokens arrive
            yield update
        took = time.time() - started
        if finished and not finished[0]:
            base_text = with_cut_mark(base_text, max_new_tokens)
        if finished and not finished[1]:
            tuned_text = with_cut_mark(tuned_text, max_new_tokens)
        base_history = base_history + [{"role": "assistant", "content": base_text}]
        tuned_history = tuned_history + [{"role": "assistant", "content": tuned_text}]
        how = ("reference answer: fp32, one answer at a time, as the merged export answers" if reference
               else precision_note(engine.precision))
        after = f" (first token after {first_token - started:.1f} s)" if first_token else ""
        queued = f" Next: {len(waiting)} waiting message{'s' if len(waiting) > 1 else ''}." if waiting else ""
        history.update(baseline=base_history, tuned=tuned_history)
        yield {self.baseline: base_history, self.tuned: tuned_history,
               self.history: {"baseline": base_history, "tuned": tuned_history},
               self.status: f"Answered with run `{run.id}` in {took:.1f} s{after}; "
                            + (f"{tokens:,} prompt tokens; " if tokens is not None else "") +
                            f"{how}.{queued}"}
