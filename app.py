"""DPO Studio web app (the Space's app_file): check data, train a DPO adapter, chat with baseline and tuned.

    python app.py                                   # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7861 python app.py
    STUDIO_HOME=/data/studio python app.py          # where runs, uploads and the model cache live

Training runs in the server process and goes on when no browser is connected; any page that opens
the app follows the active run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# This project's `studio` first, even under `python -P` or a launcher that does not put the script's folder on
# sys.path: Unsloth's wheel installs an unrelated top-level package named `studio` into site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent))
# Training, chat and generation share this process's cores from separate threads: OpenMP's default spin-waiting
# makes their torch thread pools starve each other (measured 13x slower generation beside a training run on
# 2 cores). It must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from studio import zerogpu  # noqa: E402,F401 - on a ZeroGPU Space, `spaces` is imported before anything touches CUDA
from studio.backends import early_import  # noqa: E402 - after the path fix

early_import()  # before transformers and PEFT load, so Unsloth's patches apply (a no-op without CUDA + Unsloth)

from studio.errors import StudioError  # noqa: E402
from studio.ui import build_app, launch_options  # noqa: E402 - after the early import

try:
    demo = build_app()
except StudioError as e:  # e.g. a read-only STUDIO_HOME: say so and stop, no traceback
    sys.exit(f"error: {e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DPO Studio web app")
    parser.add_argument("--host", help="interface to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args(argv)
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = args.port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    try:
        options = launch_options()
    except StudioError as e:  # e.g. STUDIO_PRIVATE=1 with no way to sign in
        sys.exit(f"error: {e}")
    demo.launch(server_name=host, server_port=port, **options)


if __name__ == "__main__":
    main()
