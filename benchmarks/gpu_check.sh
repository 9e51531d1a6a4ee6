#!/usr/bin/env bash
# The GPU path in one prepared run of at most 10 minutes (benchmarks/gpu_check.py says what it trains): where no
# CUDA GPU is visible it exits at once, status 3, having run nothing.
#   benchmarks/gpu_check.sh [--steps N] [--out FILE]    # writes benchmarks/results/gpu_check.json
# GPU_CHECK_SECONDS (default 540, under a device call's 600) bounds the run; the JSON is written after every part,
# so a cut run keeps those.
# It uses .venv/bin/python where there is one, else $PYTHON or python3 with its own torch, transformers and peft
# (a GPU machine's own install): tunesmith then runs from src/ without being installed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null
case $? in
  0) ;;
  3) echo "gpu_check: no CUDA GPU is visible to torch on this machine; this check needs one (nothing ran)" >&2; exit 3 ;;
  *) echo "gpu_check: $PY cannot import torch; set PYTHON to a Python with torch installed (nothing ran)" >&2; exit 3 ;;
esac
# what tunesmith's jobs import (a GPU machine's own install lacks some: benchmarks/README.md carries them as wheels)
missing=$("$PY" -c 'import importlib.util as u, sys; print(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))' \
  transformers peft accelerate pydantic yaml numpy pyarrow sklearn psutil rich typer jinja2 rouge_score nltk selectolax defusedxml)
if [ -n "$missing" ]; then
  echo "gpu_check: $PY lacks these Python modules: $missing; install them (benchmarks/README.md, gpu_check) (nothing ran)" >&2
  exit 3
fi
for peer in trl datasets; do
  "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$peer') is None)" ||
    echo "gpu_check: $PY lacks $peer: TRL's side of the SFT comparison will be recorded as failed" >&2
done
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout "${GPU_CHECK_SECONDS:-540}" "$PY" benchmarks/gpu_check.py "$@"
