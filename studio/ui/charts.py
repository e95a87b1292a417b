"""The plotly figures of the web app: live training curves, token-length histograms and run overlays.

Figures are built from the metric rows exactly as TRL logs them (`loss`, `rewards/margins`, ... and the
`eval_` forms), so a live run, a finished run folder and a run followed from another process chart the same.
"""

from __future__ import annotations

import plotly.graph_objects as go

TRAIN, EVAL, SMOOTH = "#4f46e5", "#f59e0b", "#0f766e"
CHOSEN, REJECTED = "#16a34a", "#dc2626"
GRID, AXIS = "#e5e7eb", "#cbd5e1"
PALETTE = ("#4f46e5", "#f59e0b", "#16a34a", "#dc2626", "#0891b2", "#9333ea", "#ea580c", "#475569")
SMOOTH_WINDOW = 10  # steps in the rolling mean of the reward accuracy

ACCURACY_CAPTION = (
    "Each step's accuracy is the share of that batch's pairs whose chosen reward beats the rejected one, "
    "so with 2 pairs per step it can only be 0, 0.5 or 1; the smooth line is a "
    f"{SMOOTH_WINDOW}-step rolling mean."
)


def split_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Training log rows (they hold `loss`) and evaluation rows (`eval_loss`)."""
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


def rolling_mean(values: list[float], window: int = SMOOTH_WINDOW) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


WAITING = "waiting for the first logged step"


def _figure(title: str, ytitle: str, empty_text: str | None, height: int = 290) -> go.Figure:
    fig = go.Figure()
    axis = dict(gridcolor=GRID, zerolinecolor=AXIS, linecolor=AXIS, showline=True, ticks="", automargin=True)
    fig.update_layout(
        # No plotly template: it would add ~7 KB to every live update of every chart.
        template="none",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12, color="#334155"),
        title=dict(text=title, x=0.01, font=dict(size=14)),
        height=height,
        # The legend sits under the plot: beside the title it overlapped long titles once eval points appeared.
        margin=dict(l=56, r=16, t=40, b=8),
        legend=dict(orientation="h", yanchor="top", y=-0.28, xanchor="left", x=0, font=dict(size=11)),
        xaxis=dict(title=dict(text="step"), rangemode="tozero", **axis),
        yaxis=dict(title=dict(text=ytitle), **axis),
        hovermode="x unified",
        uirevision="keep",  # a zoom the user set survives the live updates
    )
    if empty_text:  # fixed ranges: plotly's default empty axes run from -1 and crowd their tick labels
        fig.update_xaxes(range=[0, 10])
        fig.update_yaxes(range=[0, 1])
        fig.add_annotation(text=empty_text, showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5, font=dict(color="#94a3b8"))
    return fig


def _line(fig: go.Figure, rows: list[dict], key: str, name: str, color: str, markers: bool = True,
          dash: str | None = None, **extra) -> None:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    if not points:
        return
    x, y = zip(*points)
    fig.add_scatter(x=list(x), y=list(y), name=name, mode="lines+markers" if markers else "lines",
                    line=dict(color=color, width=2, dash=dash), marker=dict(size=5), **extra)


def _train_eval(rows: list[dict], title: str, ytitle: str, key: str) -> go.Figure:
    """One metric: its train line and its eval_ points."""
    train, evals = split_rows(rows)
    fig = _figure(title, ytitle, None if train else WAITING)
    _line(fig, train, key, "train", TRAIN)
    _line(fig, evals, f"eval_{key}", "eval", EVAL, marker_symbol="diamond")
    return fig


# Per objective: (name in titles, what its loss is made of). KTO, ORPO and SimPO log their own measures too
# (KTO: kl; ORPO: nll_loss, log_odds_ratio; SimPO's rewards are beta x mean log-prob per token).
OBJECTIVE_NAMES = {"dpo": "DPO", "kto": "KTO", "orpo": "ORPO", "simpo": "SimPO"}


def _name(objective: str) -> str:
    return OBJECTIVE_NAMES.get(objective, objective.upper())


def loss_figure(rows: list[dict], objective: str = "dpo") -> go.Figure:
    if objective == "orpo":  # ORPO's loss is the chosen answer's NLL plus beta x the odds-ratio term: both shown
        fig = _train_eval(rows, "ORPO loss (NLL on the chosen answer + odds-ratio term)", "loss", "loss")
        train, _ = split_rows(rows)
        _line(fig, train, "nll_loss", "NLL on the chosen answer", SMOOTH, dash="dot")
        return fig
    return _train_eval(rows, f"{_name(objective)} loss", "loss", "loss")


def margins_figure(rows: list[dict], objective: str = "dpo") -> go.Figure:
    title = {"simpo": "SimPO reward margin (chosen − rejected, length-normalised)",
             "orpo": "ORPO reward margin (chosen − rejected, beta × mean log-prob)",
             "kto": "KTO reward margin (thumbs-up − thumbs-down answers)"}.get(
        objective, "Reward margin (chosen − rejected)")
    return _train_eval(rows, title, "margin", "rewards/margins")


def accuracy_figure(rows: list[dict], objective: str = "dpo") -> go.Figure:
    train, evals = split_rows(rows)
    fig = _figure("Reward accuracy", "accuracy", None if train else WAITING)
    points = [(r["step"], r["rewards/accuracies"]) for r in train if r.get("rewards/accuracies") is not None]
    if points:
        x, y = (list(v) for v in zip(*points))
        fig.add_scatter(x=x, y=y, name="per step", mode="markers", marker=dict(size=6, color=TRAIN, opacity=0.45))
        fig.add_scatter(x=x, y=rolling_mean(y), name=f"{SMOOTH_WINDOW}-step mean", mode="lines",
                        line=dict(color=SMOOTH, width=3))
    elif train:
        fig.add_annotation(text=f"{_name(objective)} logs no pairwise accuracy (it scores single answers); "
                           "see the held-out accuracy in Compare", showarrow=False, xref="paper", yref="paper",
                           x=0.5, y=0.5, font=dict(color="#64748b"))
    _line(fig, evals, "eval_rewards/accuracies", "eval", EVAL, marker_symbol="diamond")
    fig.update_yaxes(range=[-0.05, 1.05])
    return fig


def _chosen_rejected(rows: list[dict], title: str, ytitle: str, key: str) -> go.Figure:
    """`key`/chosen against `key`/rejected, train lines and eval points."""
    train, evals = split_rows(rows)
    fig = _figure(title, ytitle, None if train else WAITING, height=310)
    _line(fig, train, f"{key}/chosen", "chosen", CHOSEN)
    _line(fig, train, f"{key}/rejected", "rejected", REJECTED)
    _line(fig, evals, f"eval_{key}/chosen", "eval chosen", CHOSEN, dash="dot", marker_symbol="diamond")
    _line(fig, evals, f"eval_{key}/rejected", "eval rejected", REJECTED, dash="dot", marker_symbol="diamond")
    return fig


def rewards_figure(rows: list[dict], objective: str = "dpo") -> go.Figure:
    title = {"kto": "KTO implicit rewards: thumbs-up vs thumbs-down answers",
             "orpo": "ORPO rewards (beta × mean log-prob): chosen vs rejected",
             "simpo": "SimPO rewards (beta × mean log-prob): chosen vs rejected"}.get(
        objective, "Implicit rewards: chosen vs rejected")
    return _chosen_rejected(rows, title, "reward", "rewards")


def logps_figure(rows: list[dict], objective: str = "dpo") -> go.Figure:
    if objective in ("orpo", "simpo"):  # these two log the mean per answer token
        return _chosen_rejected(rows, "Mean log-probability per token: chosen vs rejected", "log p", "logps")
    return _chosen_rejected(rows, "Log-probabilities: chosen vs rejected", "log p", "logps")


# The objective's own measure, one chart: (metric key, title in words, y axis).
OWN_MEASURE = {
    "dpo": ("entropy", "Entropy of the answer tokens (lower: more certain)", "nats"),
    "kto": ("kl", "KL estimate: tuned vs base model, on mismatched answers", "KL"),
    "orpo": ("log_odds_ratio", "Log odds ratio: chosen vs rejected answer", "log odds ratio"),
    "simpo": ("rewards/margins", "SimPO reward margin (the loss wants it above gamma)", "margin"),
}


def objective_figure(rows: list[dict], objective: str = "dpo") -> go.Figure:
    key, title, ytitle = OWN_MEASURE.get(objective, OWN_MEASURE["dpo"])
    return _train_eval(rows, title, ytitle, key)


TRAINING_CHARTS = {
    "loss": loss_figure,
    "margins": margins_figure,
    "accuracy": accuracy_figure,
    "rewards": rewards_figure,
    "logps": logps_figure,
    "objective": objective_figure,
}


def training_figures(rows: list[dict], objective: str = "dpo") -> dict[str, go.Figure]:
    """Every training chart for a run of `objective`, titled in its words."""
    return {name: make(rows, objective) for name, make in TRAINING_CHARTS.items()}


def token_histogram(lengths: dict[str, list[int]], max_length: int | None = None) -> go.Figure:
    """Overlaid histograms of prompt / chosen / rejected token counts, with max_length marked on the pair lengths."""
    fig = _figure("Token lengths per pair", "pairs", None if lengths.get("prompt") else "no token counts", height=300)
    fig.update_xaxes(title="tokens", rangemode="tozero")
    colors = {"prompt": TRAIN, "chosen": CHOSEN, "rejected": REJECTED, "completion": CHOSEN, "pair": "#64748b"}
    for part in ("prompt", "chosen", "rejected", "completion", "pair"):
        values = lengths.get(part) or []
        if values:
            fig.add_histogram(x=values, name="prompt + longer answer" if part == "pair" else part, opacity=0.55,
                              marker_color=colors[part], nbinsx=40, visible=True if part != "pair" else "legendonly")
    fig.update_layout(barmode="overlay")
    if max_length:
        fig.add_vline(x=max_length, line=dict(color="#0f172a", dash="dash", width=1),
                      annotation_text=f"max_length {max_length}", annotation_position="top left")
    return fig


def compare_figure(series: dict[str, list[dict]], key: str, title: str, ytitle: str) -> go.Figure:
    """One line per run for a training metric, and its eval points, to compare runs."""
    fig = _figure(title, ytitle, None if any(series.values()) else "select runs to compare", height=300)
    for i, (run_id, rows) in enumerate(series.items()):
        train, evals = split_rows(rows)
        color = PALETTE[i % len(PALETTE)]
        _line(fig, train, key, run_id, color, markers=len(train) < 60)
        _line(fig, evals, f"eval_{key}", f"{run_id} (eval)", color, dash="dot", marker_symbol="diamond",
              showlegend=False)
    return fig
