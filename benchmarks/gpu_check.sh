#!/usr/bin/env bash
# The GPU checks (benchmarks/gpu_check.py) on a machine with the torch it already has, whatever its version, and
# without ../shared. Packages bertkit needs that are missing there are installed from .gpu_wheels/ (an ignored
# folder of wheels carried along: `pip download -d .gpu_wheels google-crc32c tokenizers safetensors tqdm numpy`
# for that machine's Python) or, failing that, from the registry. Under 4 minutes on one GPU.
#   bash benchmarks/gpu_check.sh          # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu    # the same checks, tiny, on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
missing=$(python - <<'PY'
import importlib.util
need = {"google_crc32c": "google-crc32c", "tokenizers": "tokenizers", "safetensors": "safetensors",
        "tqdm": "tqdm", "numpy": "numpy"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
    echo "installing: $missing" >&2
    if [ -d .gpu_wheels ]; then
        python -m pip install -q --no-index --find-links .gpu_wheels $missing || python -m pip install -q $missing
    else
        python -m pip install -q $missing
    fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
timeout "${GPU_CHECK_TIMEOUT:-230}" python benchmarks/gpu_check.py "$@"
