"""Data tab: check a preference file (or hub dataset) with the engine and make it the Train tab's data.

The report is `studio.data.load_preferences`, the same call as `python -m studio data check`: detected
layout, counts, dropped rows with their row numbers and reasons, token lengths. When the layout is
unknown, or every row was dropped, the tab says which, with column-mapping dropdowns of the file's
columns pre-selected from their names. A check that first converts the embedded model says so while it waits.
Uploads are stored by `studio.files` under generated names; one that cannot be read at all is deleted
at once. Any other path is read only inside the folders `studio.files` allows.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd

from studio import jobs
from studio.config import RunConfig
from studio.data import Columns, NoUsablePairs, UnknownLayout, guess_columns, load_preferences, peek, token_lengths
from studio.data.clean import write_cleaned
from studio.data.findings import DROPPABLE, counts, rows_to_drop
from studio.suspects import find_suspects, resolve
from studio.errors import ConfigError, DataError, StudioError
from studio.access import require_user
from studio.files import check_data_source, clean_uploads, discard_upload, is_hub_id, store_upload, uploads_dir
from studio.pools import preference_files
from studio.runs import LIVE_STATES, data_in_use, list_runs
from studio.training_data import data_findings, eval_source
from studio.models import EMBEDDED_NAME, ModelError, display_name, needs_preparing

from . import charts
from .common import Services, escape

PREVIEW_PAIRS = 6
FILE_TYPES = [".jsonl", ".ndjson", ".json", ".csv", ".parquet"]
PARTS = ("prompt", "chosen", "rejected", "system")
MAPPING_HELP = ("**Map the columns:** pick which column holds each part in the dropdowns below, then press "
                "**Check with this mapping**. Columns whose names say what they hold are picked already; check that "
                "*chosen* is the preferred answer.")
PREPARING = (f"### Preparing the embedded model (one time, ~30 s)…\n\n{EMBEDDED_NAME} is converted once from the "
             "file it ships in to a form that trains and counts tokens fast; the check of your file follows. "
             "Later uploads and runs skip this.")


KIND_TITLES = {
    "duplicate": "Duplicates", "near_duplicate": "Near duplicates", "conflict": "Conflicts",
    "eval_overlap": "Held-out prompts also in training", "truncated": "Cut at max_length",
    "length_bias": "Length bias", "small_eval": "Too few held-out pairs", "suspect_label": "Suspect labels",
}
DROP_LABELS = {"duplicate": "duplicates (the copies)", "near_duplicate": "near duplicates (the copies)",
               "conflict": "conflicts (both rows)", "eval_overlap": "training rows whose prompt is held out",
               "suspect_label": "the suspect rows I ticked below"}
EXAMPLES = 2


def findings_markdown(findings: list[dict]) -> str:
    """The findings grouped by kind: a count and the first two messages of each."""
    if not findings:
        return "#### Findings\n\n✅ No duplicates, conflicts, held-out overlap, cut pairs, length bias or small held-out set."
    lines = [f"#### Findings: {len(findings)}"]
    for kind, n in counts(findings).items():
        of_kind = [f for f in findings if f["kind"] == kind]
        lines.append(f"**{KIND_TITLES[kind]}** (`{kind}`) · {n}")
        lines += [f"- {escape(f['message'])}" for f in of_kind[:EXAMPLES]]
        if n > EXAMPLES:
            lines.append(f"- … and {n - EXAMPLES} more")
    return "\n\n".join(lines)


def drop_choices(findings: list[dict]) -> list[tuple[str, str]]:
    return [(f"{DROP_LABELS[kind]} · {n}", kind) for kind, n in counts(findings).items() if kind in DROPPABLE]


def suspect_model_choices() -> list[tuple[str, str]]:
    """The embedded model and every finished run with an adapter (a run trained on this file finds its odd pairs)."""
    runs = [r.id for r in list_runs() if r.has_adapter and r.state not in LIVE_STATES]
    return [(f"{EMBEDDED_NAME} (embedded)", "embedded")] + [(f"run {r}", r) for r in runs]


def browser_words(message: str) -> str:
    """An engine message as a browser user acts on it: the mapping dropdowns instead of the CLI's --*-col flags."""
    return re.sub(r"--(prompt|chosen|rejected|system)-col", r"the \1 column dropdown", message)

PREVIEW_CSS = """
.ds-pair { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 8px; margin-bottom: 10px; }
.ds-cell { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px;
  font-size: 13px; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 220px; overflow: auto; }
.ds-cell h4 { margin: 0 0 4px 0; font-size: 11px; text-transform: uppercase; letter-spacing: .05em; }
.ds-prompt h4 { color: #4338ca; } .ds-chosen { background: rgba(22, 163, 74, .06); } .ds-chosen h4 { color: #15803d; }
.ds-rejected { background: rgba(220, 38, 38, .05); } .ds-rejected h4 { color: #b91c1c; }
.ds-role { color: var(--body-text-color-subdued); font-weight: 600; }
"""


def summary_markdown(report: dict, checked_with: str, note: str = "", title: str | None = None) -> str:
    dropped = report["dropped"]
    used = ", ".join(f"{part} = `{column}`" for part, column in report.get("used", {}).items())
    lines = [
        f"### {escape(title or Path(report['source']).name or report['source'])}",
        f"**Format:** {report['format']} · **Layout:** {report['layout']}" + (f" · **Columns:** {used}" if used else ""),
        "| rows read | usable pairs | dropped |\n| ---: | ---: | ---: |\n"
        f"| {report['rows']} | {report['pairs']} | {len(dropped)} |"
        if not report.get("unpaired") else
        "| rows read | usable answers (👍 / 👎) | dropped |\n| ---: | ---: | ---: |\n"
        f"| {report['rows']} | {report['pairs']} ({(report.get('labels') or {}).get('up', 0)} / "
        f"{(report.get('labels') or {}).get('down', 0)}; objective kto) | {len(dropped)} |",
    ]
    tokens = report.get("tokens")
    if tokens:
        table = ["| tokens | min | mean | p95 | max |", "| --- | ---: | ---: | ---: | ---: |"]
        labels = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "completion": "answer",
                  "pair": "prompt + answer" if report.get("unpaired") else "prompt + longer answer"}
        for part, s in tokens.items():
            table.append(f"| {labels.get(part, part)} | {s['min']} | {s['mean']} | {s['p95']} | {s['max']} |")
        lines.append("\n".join(table))
    for reader_note in report.get("notes", []):
        lines.append(f"ℹ️ {escape(reader_note)}")
    lines.append(f"<span class='ds-muted'>{checked_with}</span>")
    if note:
        lines.append(note)
    return "\n\n".join(lines)


def _message_text(message: dict) -> str:
    return f"{message['role']}: {message['content']}"


def preview_html(pairs: list[dict], limit: int = PREVIEW_PAIRS) -> str:
    cards = []
    for number, pair in enumerate(pairs[:limit], 1):
        if len(pair["prompt"]) == 1:
            prompt = escape(pair["prompt"][0]["content"])
        else:  # a system message or earlier turns: show who says what
            prompt = "\n".join(f"<span class='ds-role'>{escape(m['role'])}:</span> {escape(m['content'])}"
                               for m in pair["prompt"])
        if "completion" in pair:  # KTO's single answer with a thumbs up or down
            kind, label = ("ds-chosen", "👍 thumbs up") if pair["label"] else ("ds-rejected", "👎 thumbs down")
            cards.append(
                '<div class="ds-pair">'
                f'<div class="ds-cell ds-prompt"><h4>prompt · answer {number}</h4>{prompt}</div>'
                f'<div class="ds-cell {kind}"><h4>{label}</h4>{escape(pair["completion"][-1]["content"])}</div>'
                "</div>")
            continue
        cards.append(
            '<div class="ds-pair">'
            f'<div class="ds-cell ds-prompt"><h4>prompt · pair {number}</h4>{prompt}</div>'
            f'<div class="ds-cell ds-chosen"><h4>chosen</h4>{escape(pair["chosen"][-1]["content"])}</div>'
            f'<div class="ds-cell ds-rejected"><h4>rejected</h4>{escape(pair["rejected"][-1]["content"])}</div>'
            "</div>")
    more = f"<p class='ds-muted'>First {min(limit, len(pairs))} of {len(pairs)} pairs.</p>" if pairs else ""
    return "".join(cards) + more


def raw_rows(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    def cell(value) -> str:
        try:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)[:160]
        # A stray byte kept as a surrogate escape cannot travel as JSON to the browser.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= 160 else text[:157] + "…"

    return pd.DataFrame([[cell(row.get(c)) for c in columns] for row in rows], columns=columns)


def pool_file_choices() -> list[tuple[str, str]]:
    """Every pool's preference file (newest first), with its pair count and who labelled it."""
    choices = []
    for path in preference_files():
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        labellers = ", ".join(sorted({str(r.get("labeller")) for r in rows})) or "?"
        choices.append((f"{path.parent.name} · {len(rows)} pairs · {labellers}", str(path)))
    return choices


def _in_gradio_uploads(path: str) -> bool:
    from gradio.utils import get_upload_folder

    return Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve())


class DataTab:
    def __init__(self, services: Services):
        self.services = services
        with gr.Tab("Data", id="data") as self.tab:
            gr.Markdown("Check a preference data set before training: the layout found, the rows that cannot be "
                        "used and why, token lengths, and the pairs themselves. A checked file becomes the Train "
                        "tab's data.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=280):
                    self.upload = gr.File(label="Preference file: JSONL, JSON, CSV or Parquet", file_types=FILE_TYPES,
                                          type="filepath", elem_id="data-upload", height=170)
                    with gr.Row():
                        self.hub_id = gr.Textbox(label="…or a hub dataset id", placeholder="owner/name", scale=3)
                        self.hub_check = gr.Button("Check", scale=1, min_width=80)
                    self.check_train = gr.Button("Check the Train tab's data", size="sm")
                    with gr.Row(equal_height=True):  # files the Grow pairs tab wrote from labelled pools
                        self.pool_file = gr.Dropdown(pool_file_choices(), value=None, label="…or a labelled pool's "
                                                     "preference file", scale=3, allow_custom_value=True,
                                                     elem_id="data-pool-file")
                        self.pool_check = gr.Button("Check", scale=1, min_width=80, elem_id="data-pool-check")
                with gr.Column(scale=3):
                    self.summary = gr.Markdown("Upload a file to see its report.", elem_id="data-summary")
                    self.findings = gr.Markdown("", elem_id="data-findings")
            with gr.Group(visible=False) as self.clean_box:
                gr.Markdown("**Suspect labels:** a model scores every pair; those whose *rejected* answer it prefers "
                            "most are listed to review. With a run trained on this very file, they are the pairs that "
                            "go against what the rest of the data taught it: swapped labels first.",
                            elem_classes="ds-pad")
                with gr.Row(equal_height=True):
                    self.suspect_model = gr.Dropdown(suspect_model_choices(), value="embedded", scale=3,
                                                     label="Model or run that scores the pairs",
                                                     elem_id="data-suspect-model")
                    self.suspect_btn = gr.Button("Find suspect labels", scale=1, elem_id="data-suspects")
                self.suspect_rows = gr.CheckboxGroup([], label="Suspect rows to drop (tick those you confirm)",
                                                     elem_id="data-suspect-rows")
                self.drop_kinds = gr.CheckboxGroup([], label="Leave out of the cleaned copy", elem_id="data-drop-kinds")
                self.clean_btn = gr.Button("Write a cleaned copy", variant="primary", elem_id="data-clean")
            with gr.Group(visible=False) as self.mapping_box:
                gr.Markdown(MAPPING_HELP, elem_classes="ds-pad")
                with gr.Row():
                    self.mapping = {part: gr.Dropdown([], value=None, label=f"{part} column", allow_custom_value=False)
                                    for part in PARTS}
                self.map_check = gr.Button("Check with this mapping", variant="primary")
                self.raw = gr.Dataframe(label="First rows as read", interactive=False, wrap=True, max_height=300)
            with gr.Row(equal_height=False):
                self.histogram = gr.Plot(charts.token_histogram({}), show_label=False, elem_id="data-histogram")
                self.dropped = gr.Dataframe(pd.DataFrame(columns=["row", "reason"]), label="Dropped rows",
                                            interactive=False, wrap=True, max_height=300, elem_id="data-dropped")
            gr.Markdown("#### Pairs")
            self.preview = gr.HTML("", css_template=PREVIEW_CSS, js_on_load=None, elem_id="data-preview")
            self.source = gr.State(None)  # what was last checked: a path under STUDIO_HOME/uploads or a hub id
            self.found = gr.State([])  # its findings (the cleaned copy drops their rows)
        # The name a stored upload was uploaded under, by its random stored path: the report of a mapped check is
        # titled with the user's file name too. Kept in memory only (the user's name never reaches the disk).
        self._shown_names: dict[str, str] = {}

    def connect(self, train) -> None:
        """Wire to the Train tab: its model and max_length shape the check; a good check fills its data fields."""
        f = train.fields
        self.train_fields = {name: f[name] for name in ("data", "eval_data", *(f"{p}_col" for p in PARTS))}
        outputs = [self.summary, self.mapping_box, *self.mapping.values(), self.raw, self.histogram, self.dropped,
                   self.preview, self.source, *self.train_fields.values(), self.findings, self.found, self.clean_box,
                   self.drop_kinds, self.suspect_rows]
        context = {"model": f["model"], "max_length": f["max_length"], "eval_fraction": f["eval_fraction"],
                   "seed": f["seed"]}
        self.upload.upload(self.check_upload, inputs_kwargs={"file": self.upload, **context}, outputs=outputs,
                           api_name="check_upload")
        gr.on([self.hub_check.click, self.hub_id.submit], self.check_hub,
              inputs_kwargs={"dataset_id": self.hub_id, **context}, outputs=outputs, api_name="check_hub")
        self.map_check.click(self.check_mapped, inputs_kwargs={"source": self.source, **context,
                                                               **{p: self.mapping[p] for p in PARTS}},
                             outputs=outputs, api_name="check_mapping")
        self.pool_check.click(self.check_pool_file, inputs_kwargs={"path": self.pool_file, **context}, outputs=outputs,
                              api_name="check_pool_file")
        self.tab.select(lambda: (gr.Dropdown(choices=pool_file_choices()), gr.Dropdown(choices=suspect_model_choices())),
                        outputs=[self.pool_file, self.suspect_model],
                        api_visibility="private", show_progress="hidden", concurrency_limit=None)
        columns = {f"{p}_col": f[f"{p}_col"] for p in PARTS}
        self.suspect_btn.click(self.find_suspects, inputs_kwargs={"source": self.source, "found": self.found,
                                                                  "spec": self.suspect_model, **context, **columns},
                               outputs=[self.findings, self.found, self.drop_kinds, self.suspect_rows],
                               api_name="find_suspects", concurrency_id="data-suspects", concurrency_limit=1)
        self.clean_btn.click(self.write_clean, inputs_kwargs={"source": self.source, "found": self.found,
                                                             "kinds": self.drop_kinds, "confirmed": self.suspect_rows,
                                                             **context, **columns},
                             outputs=outputs, api_name="write_cleaned_copy")
        self.check_train.click(self.check_train_data, inputs_kwargs={"data": f["data"], "eval_data": f["eval_data"],
                                                                     **context,
                                                                     **{f"{p}_col": f[f"{p}_col"] for p in PARTS}},
                               outputs=outputs, api_name="check_train_data")

    # --- handlers ---
    def _announced(self, model: str | None, work):
        """`work()`'s outputs, after a line saying what happens when it first converts the embedded model."""
        if needs_preparing(model or "embedded"):
            yield {self.summary: PREPARING}
        yield work()

    def check_upload(self, file: str | None, model: str, max_length, eval_fraction=None, seed=None,
                     request: gr.Request = None):
        if not file:
            yield {self.summary: gr.skip()}
            return
        yield from self._announced(model, lambda: self._check_upload(file, model, max_length, request,
                                                                     split=(eval_fraction, seed)))

    def _check_upload(self, file: str, model: str, max_length, request: gr.Request = None, split=(None, None)) -> dict:
        if not file:
            return {self.summary: gr.skip()}
        name = Path(file).name  # Gradio keeps the user's file name for its temporary copy
        try:
            require_user(request, "upload data")
        except StudioError as e:
            discard_upload(file)
            return self._refused(name, str(e))
        if not _in_gradio_uploads(file):
            # Gradio refuses such inputs itself; were one to get through, copying it would read a server file.
            return self._refused(name, "Refused: this file was not uploaded through the app.")
        try:
            clean_uploads(keep=data_in_use())  # old uploads go, except those a run still reads
            stored = store_upload(file, name)
        except StudioError as e:
            return self._refused(name, str(e))
        if len(self._shown_names) > 1000:
            self._shown_names.clear()
        self._shown_names[str(stored)] = name
        out = self.check(str(stored), Columns(), model, max_length, fresh=True, title=name, split=split)
        if out.get(self.source) is None:  # unreadable: nothing to map, so nothing to keep
            discard_upload(stored)
        return out

    def check_hub(self, dataset_id: str, model: str, max_length, eval_fraction=None, seed=None):
        yield from self._announced(model, lambda: self._check_hub(dataset_id, model, max_length, (eval_fraction, seed)))

    def _check_hub(self, dataset_id: str, model: str, max_length, split=(None, None)) -> dict:
        dataset_id = (dataset_id or "").strip()
        if not dataset_id:
            gr.Warning("Type a hub dataset id such as owner/name.")
            return {self.summary: gr.skip()}
        if not is_hub_id(dataset_id):  # a path typed here would be read as one: not from this box
            return self._refused(dataset_id, f"'{dataset_id}' is not a hub dataset id (owner/name). "
                                             "Upload a file to check it.")
        return self.check(dataset_id, Columns(), model, max_length, fresh=True, split=split)

    def check_mapped(self, source: str | None, model: str, max_length, prompt, chosen, rejected, system,
                     eval_fraction=None, seed=None):
        yield from self._announced(model, lambda: self._check_mapped(source, model, max_length, prompt, chosen,
                                                                     rejected, system, (eval_fraction, seed)))

    def _check_mapped(self, source: str | None, model: str, max_length, prompt, chosen, rejected, system,
                      split=(None, None)) -> dict:
        if not source:
            gr.Warning("Upload a file first.")
            return {self.summary: gr.skip()}
        return self.check(source, Columns(prompt or None, chosen or None, rejected or None, system or None),
                          model, max_length, fresh=True, split=split, title=self._shown_names.get(str(source)))

    def check_pool_file(self, path: str | None, model: str, max_length, eval_fraction=None, seed=None,
                        request: gr.Request = None) -> dict:
        try:
            require_user(request, "read data files")
        except StudioError as e:
            return self._refused(path or "", str(e))
        if not path:
            gr.Warning("Pick a pool's preference file (write one in the Grow pairs tab first).")
            return {self.summary: gr.skip()}
        return self.check(path, Columns(), model, max_length, fresh=True, title=f"pool {Path(path).parent.name}",
                          split=(eval_fraction, seed))

    def check_train_data(self, data: str, model: str, max_length, prompt_col, chosen_col, rejected_col,
                         system_col, eval_fraction=None, seed=None, eval_data=None, request: gr.Request = None):
        yield from self._announced(model, lambda: self._check_train_data(data, model, max_length, prompt_col,
                                                                         chosen_col, rejected_col, system_col, request,
                                                                         (eval_fraction, seed, eval_data)))

    def _check_train_data(self, data: str, model: str, max_length, prompt_col, chosen_col, rejected_col,
                          system_col, request: gr.Request = None, split=(None, None)) -> dict:
        try:
            require_user(request, "read data files")
        except StudioError as e:
            return self._refused(data or "", str(e))
        if not (data or "").strip():
            gr.Warning("The Train tab has no data set yet.")
            return {self.summary: gr.skip()}
        columns = Columns(prompt_col or None, chosen_col or None, rejected_col or None, system_col or None)
        return self.check(data.strip(), columns, model, max_length, fresh=False, split=split)

    def check(self, source: str, columns: Columns, model: str, max_length, fresh: bool,
              title: str | None = None, split=(None, None)) -> dict:
        """The engine's report for `source`; on success it becomes the Train tab's data.

        Every source passes `check_data_source` first: a hub id, or a file inside the allowed folders.
        """
        try:
            source = check_data_source(source, for_web=True)
        except StudioError as e:
            return self._refused(source, str(e))
        max_length = int(max_length) if max_length else None
        tokenizer, checked_with = self._tokenizer(model, max_length)
        try:
            data = load_preferences(source, columns, tokenizer=tokenizer, max_length=max_length if tokenizer else None)
        except StudioError as e:
            return self._unknown(source, e, title)
        report = data.report.to_dict()
        lengths = token_lengths(data.pairs, tokenizer) if tokenizer is not None else {}
        try:
            cfg = self._run_settings(source, columns, max_length, split, fresh)
            findings = data_findings(cfg, data, tokenizer=tokenizer)
        except StudioError as e:  # e.g. the Train tab's held-out file cannot be read
            cfg, findings = None, []
            gr.Warning(f"No findings: {browser_words(str(e))}")
        held = f"held out: {eval_source(cfg)}" if cfg is not None else "held out: the eval fraction"
        note = (f"**This is now the training data in the Train tab** ({held})." if fresh
                else f"This is the Train tab's data ({held}).")
        out = {
            self.summary: summary_markdown(report, checked_with, note, title),
            self.mapping_box: gr.Group(visible=columns.given()),
            self.raw: gr.skip(),
            self.histogram: charts.token_histogram(lengths, max_length),
            self.dropped: pd.DataFrame(report["dropped"], columns=["row", "reason"]),
            self.preview: preview_html(data.pairs),
            self.source: source,
            **self._findings_out(findings),
        }
        if fresh:
            out.update({self.train_fields["data"]: source, self.train_fields["eval_data"]: ""})
            out.update({self.train_fields[f"{p}_col"]: getattr(columns, p) or "" for p in PARTS})
        return out

    @staticmethod
    def _run_settings(source: str, columns: Columns, max_length, split, fresh: bool) -> RunConfig:
        """The settings a run on `source` would have: the Train tab's split (a fresh check clears eval_data)."""
        eval_fraction, seed, *rest = (*split, None)
        eval_data = None if fresh else (rest[0] or "").strip() or None
        if eval_data:
            eval_data = check_data_source(eval_data, for_web=True)
        defaults = RunConfig()
        try:  # numbers from the page (or sent through the API): bad ones are the sender's mistake, named
            numbers = {"max_length": int(max_length or defaults.max_length),
                       "eval_fraction": float(eval_fraction if eval_fraction is not None else defaults.eval_fraction),
                       "seed": int(seed if seed is not None else defaults.seed)}
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"The split settings must be numbers: max length {max_length!r}, eval fraction "
                              f"{eval_fraction!r}, seed {seed!r}.") from None
        return RunConfig(data=source, eval_data=eval_data, prompt_col=columns.prompt, chosen_col=columns.chosen,
                         rejected_col=columns.rejected, system_col=columns.system, **numbers)

    def _findings_out(self, findings: list[dict]) -> dict:
        suspects = [f["rows"][0] for f in findings if f["kind"] == "suspect_label"]
        return {self.findings: findings_markdown(findings), self.found: findings,
                self.clean_box: gr.Group(visible=True),
                self.drop_kinds: gr.CheckboxGroup(choices=drop_choices(findings), value=[]),
                self.suspect_rows: gr.CheckboxGroup(choices=[(f"row {r}", r) for r in suspects], value=[])}

    # --- the doctor's actions: suspect labels, a cleaned copy ---
    def find_suspects(self, source: str | None, found: list[dict], spec: str, model: str, max_length, eval_fraction,
                      seed, prompt_col, chosen_col, rejected_col, system_col, progress=gr.Progress(),
                      request: gr.Request = None):
        """Score the checked pairs with the embedded model or a finished run (on the job slot) and list the suspects."""
        try:
            require_user(request, "score data with a model")
            if not source:
                raise DataError("Check a data file first.")
            if spec not in {value for _, value in suspect_model_choices()}:
                raise DataError(f"Pick the embedded model or a finished run to score the pairs (got {spec!r}).")
            source = check_data_source(source, for_web=True)
            columns = Columns(prompt_col or None, chosen_col or None, rejected_col or None, system_col or None)
            data = load_preferences(source, columns)
            base, run = resolve(spec)

            def work(job):
                import torch

                job.report("scoring pairs", 0, len(data))
                engine = self.services.chat.get(base, dtype=torch.float32)

                def step(done, total):
                    job.report("scoring pairs", done, total)
                    progress((done, total), desc="scoring pairs")

                return find_suspects(data, spec, max_length=None if run else int(max_length or 512), engine=engine,
                                     progress=step)

            suspects = jobs.run("suspects", f"finding suspect labels with {spec}", work)
        except StudioError as e:
            gr.Warning(browser_words(str(e)), title="Cannot find suspect labels")
            return {self.findings: gr.skip()}
        findings = [f for f in found or [] if f["kind"] != "suspect_label"] + suspects
        out = self._findings_out(findings)
        out.pop(self.clean_box)
        if not suspects:
            gr.Info(f"{spec} prefers the chosen answer of every pair: no suspect labels.")
        return out

    def write_clean(self, source: str | None, found: list[dict], kinds: list[str], confirmed: list, model: str,
                    max_length, eval_fraction, seed, prompt_col, chosen_col, rejected_col, system_col,
                    request: gr.Request = None) -> dict:
        """A new file in uploads without the rows of the ticked kinds; it becomes the Train tab's data."""
        try:
            require_user(request, "write a cleaned copy")
            if not source or not found:
                raise DataError("Check a data file with findings first.")
            kinds = [k for k in kinds or [] if k in DROPPABLE]
            if not kinds:
                raise DataError("Tick at least one kind of finding to leave out.")
            if "suspect_label" in kinds and not confirmed:
                raise DataError("Tick the suspect rows you confirm (or untick suspect rows).")
            source = check_data_source(source, for_web=True)
            columns = Columns(prompt_col or None, chosen_col or None, rejected_col or None, system_col or None)
            drop = rows_to_drop(found, kinds, {int(r) for r in confirmed or []})
            data = load_preferences(source, columns)
            name = Path(source).stem if not is_hub_id(source) else source.replace("/", "-")
            folder = uploads_dir()
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{name[:60]}-cleaned-{uuid.uuid4().hex[:8]}.jsonl"
            kept = write_cleaned(data, drop, target)
        except StudioError as e:
            gr.Warning(browser_words(str(e)), title="No cleaned copy written")
            return {self.summary: gr.skip()}
        gr.Info(f"Wrote {target.name}: {kept} pairs, {len(drop)} rows left out ({', '.join(kinds)}). The original "
                "is unchanged; the copy is now the training data.", title="Cleaned copy")
        return self.check(str(target), Columns(), model, max_length, fresh=True, title=target.name,
                          split=(eval_fraction, seed))

    def _unknown(self, source: str, error: StudioError, title: str | None = None) -> dict:
        """What went wrong, and dropdowns of the columns found when the file itself could be read.

        An unknown layout and a recognised layout whose rows were all dropped are told apart; the
        dropdowns start from the columns used, else from the column names. Only a source whose rows
        could be read is kept as the one to map; for an unreadable file gr.State is cleared, which tells
        check_upload to discard it.
        """
        try:
            columns, rows = peek(source) if not is_hub_id(source) else ([], [])
        except (StudioError, OSError):
            columns, rows = [], []
        name = title or Path(source).name or source
        out = self._refused(name, str(error))
        picked = guess_columns(columns)
        if isinstance(error, UnknownLayout):
            out[self.summary] = (f"### Cannot use {escape(name)}\n\n⚠️ Could not tell which columns hold the prompt, "
                                 "the chosen and the rejected answer. Columns found: "
                                 f"{html.escape(', '.join(error.found) or '(none)', quote=False)}.\n\n"
                                 "Pick them in the dropdowns below, then press **Check with this mapping**.")
        elif isinstance(error, NoUsablePairs):
            out[self.dropped] = pd.DataFrame(error.dropped, columns=["row", "reason"])
            if error.layout:
                picked = {part: column for part, column in error.used.items() if part in PARTS}
                used = ", ".join(f"{part} = `{column}`" for part, column in error.used.items())
                out[self.summary] = (f"### Cannot use {escape(name)}\n\n**Layout:** {escape(error.layout)} · "
                                     f"**Columns:** {used}\n\n⚠️ The layout was recognised, but all {error.rows} rows "
                                     "were dropped: none is a usable pair. Each row and why it was dropped is listed "
                                     "under **Dropped rows**. If these are the wrong columns, pick others below.")
            else:
                out[self.summary] = (f"### Cannot use {escape(name)}\n\n⚠️ None of the {error.rows} rows could be read "
                                     "as a record; each is listed under **Dropped rows** with why.")
        out.update({self.source: source if columns else None, self.mapping_box: gr.Group(visible=bool(columns))})
        if columns:
            out.update({self.mapping[p]: gr.Dropdown(choices=[("(none)", "")] + columns, value=picked.get(p, ""))
                        for p in PARTS})
            out[self.raw] = raw_rows(rows, columns)
        return out

    def _refused(self, name: str, message: str) -> dict:
        """A refusal shown where the user acted: in the summary, with the rest of the report cleared."""
        text = html.escape(browser_words(message), quote=False)  # the message may quote column names from the file
        return {self.summary: f"### Cannot use {escape(name)}\n\n⚠️ {text}", self.source: None,
                self.findings: "", self.found: [], self.clean_box: gr.Group(visible=False),
                self.histogram: charts.token_histogram({}), self.preview: "",
                self.dropped: pd.DataFrame(columns=["row", "reason"]), self.mapping_box: gr.Group(visible=False)}

    def _tokenizer(self, model: str, max_length: int | None):
        model = model or "embedded"
        try:
            tokenizer = self.services.tokenizer(model)
        except ModelError as e:
            return None, f"Token lengths skipped: {e}"
        limit = f", max_length {max_length} (prompts reaching it are dropped, as the trainer would)" if max_length else ""
        return tokenizer, f"Tokens counted with the tokenizer of {display_name(model)}{limit}."
