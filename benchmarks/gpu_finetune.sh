#!/usr/bin/env bash
# The fine-tune benchmark in one call on a bare one-GPU machine with no internet.
#
#   bash benchmarks/gpu_finetune.sh          # from the repository root, on the GPU machine
#   bash benchmarks/gpu_finetune.sh --cpu    # the same sequence with the tiny model on a CPU
#
# 1. Installs medgrit (-e '.[train]') and its test helpers (-e ./testing) from the wheels carried
#    in wheels/ (--no-index), into build/venv-bench (seeing the system's packages), unless the
#    packages already import.
# 2. Runs benchmarks/bench_finetune.py: a Qwen2.5-VL-3B-shaped model with random weights on 200
#    demo images of about 2,048 tokens, medgrit's training step against plain transformers
#    Trainer + peft, LoRA then full fine-tuning (each row in a fresh process), then the saved LoRA
#    adapter answering test turns. About six minutes on one H100 (80 GB), after the install.
#    --cpu: the tiny model, bf16 autocast on the CPU, a couple of minutes.
# Writes bench_finetune.json and bench_finetune.log to $OUT when it is set, else to
# build/bench-finetune/. Exit status: non-zero when the install or any row failed.
#
# wheels/ is made beforehand, from the repository root, on a Linux x86_64 machine with internet,
# pip's default index (PyPI) and the GPU machine's Python version (python3 --version there; medgrit
# needs 3.11 or newer), then copied into the GPU machine's repository root (about 4 GB):
#
#   python3.11 -m pip download --dest wheels --only-binary=:all: '.[train]' ./testing pip \
#       'setuptools>=69' wheel async-timeout torch==2.13.0 transformers==5.25.0 trl==1.16.0 \
#       peft==0.21.2 accelerate==1.16.0 datasets==5.2.0
#
# A machine whose Python already has a CUDA torch (>= 2.6) keeps it: leave torch and the nvidia-*
# wheels out (download the rest with --no-deps, naming what that Python lacks).
# The versions are those the CPU check ran with; pip, setuptools and wheel install offline (the
# editable installs build with them); async-timeout is what redis needs on a Python below 3.11.3
# (Debian 12's 3.11.2), whose markers a newer Python's download leaves out. PyPI's Linux torch is
# the CUDA build (its nvidia-* wheels come along): torch 2.13's wants CUDA 13, an NVIDIA driver 580
# or newer. For an older driver, take torch built for its CUDA from PyTorch's own index instead
# (e.g. add --extra-index-url https://download.pytorch.org/whl/cu128 and torch==2.13.0+cu128).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=gpu
if [[ "${1:-}" == "--cpu" ]]; then
    mode=cpu
elif [[ $# -gt 0 ]]; then
    echo "usage: bash benchmarks/gpu_finetune.sh [--cpu]" >&2
    exit 2
fi
out=${OUT:-$PWD/build/bench-finetune}
mkdir -p "$out"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded

python=${PYTHON:-$(command -v python3.11 || command -v python3)}
needed="import medgrit, medgrit_testing, torch, transformers, trl, peft, accelerate, datasets"
if ! "$python" -c "$needed" 2>/dev/null; then
    if [[ ! -d wheels ]]; then
        echo "the packages are missing and there is no wheels/ folder: see this script's header" >&2
        exit 2
    fi
    tag=$("$python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    # a CUDA torch already installed (>= 2.6) is kept; else wheels/ must bring one
    if ! "$python" -c "import torch" 2>/dev/null &&
        ! compgen -G "wheels/torch-*-$tag-*.whl" >/dev/null; then
        echo "wheels/ holds no torch wheel for $tag ($python): download them with this Python's" \
            "version (see this script's header), or set PYTHON" >&2
        exit 2
    fi
    # a venv of its own (the system's Python may be externally managed), with no pip of its own
    [[ -x build/venv-bench/bin/python ]] ||
        "$python" -m venv --system-site-packages --without-pip build/venv-bench
    python=$PWD/build/venv-bench/bin/python
    if "$python" -m pip --version >/dev/null 2>&1; then
        pip=("$python" -m pip)
    else  # pip runs from its own wheel
        wheel=$(compgen -G "wheels/pip-*.whl" | head -n 1)
        pip=("$python" "$wheel/pip")
    fi
    "${pip[@]}" install --no-index --find-links wheels -e '.[train]' -e ./testing
    "$python" -c "$needed"
fi

if [[ $mode == gpu ]]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$python" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: a CPU build, or a "
        "driver older than its CUDA wants; carry a torch built for this driver"
    )
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF
    sizes=(--images 200 --seq 2048 --batch 4 --steps 25 --warmup 5 --row-timeout 300)
else
    sizes=(--tiny --images 40 --steps 4 --warmup 1 --predict-per-task 2 --new-tokens 8)
fi
set +e
"$python" benchmarks/bench_finetune.py "${sizes[@]}" --json "$out/bench_finetune.json" 2>&1 |
    tee "$out/bench_finetune.log"
status=${PIPESTATUS[0]}
set -e
echo "results: $out/bench_finetune.json (exit status $status)"
exit "$status"
