"""The Gradio front of DPO Studio: one module per tab (data, train, chat, runs, compare), plotly figures in charts.

The engine never imports this package; this package only calls the engine.
"""

from .build import build_app, launch_options

__all__ = ["build_app", "launch_options"]
