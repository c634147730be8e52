#!/usr/bin/env bash
# The GPU check: one short script for a machine with one NVIDIA GPU, never required by the tests
# (docs/scaling.md). About 8 minutes; every part has its own time limit and a missing package
# (TRL, Liger, FlashAttention, vLLM) is named and skipped, not fatal. It uses the `python` it is
# run with (one with a CUDA build of torch and prefopt installed: pip install -e '.[dev]').
#
#   bash benchmarks/gpu_check.sh [OUT]     # results as JSON in OUT (default: gpu-check/)
#
# 1. training against TRL in bf16 at a batch and length where the GPU is not launch-bound
#    (batch 32, 512 tokens; TRL with FlashAttention 2 + padding_free and Liger where installed),
#    with MFU; 2. `prefopt rl` against TRL's GRPOTrainer (K = 8, 64 new tokens); 3. generation:
#    prefopt's sampler, transformers (dynamic and static cache) and vLLM.
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
python=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)

has() { "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

"$python" - <<'EOF' || { echo "no CUDA GPU visible to this python: nothing to check"; exit 1; }
import torch
assert torch.cuda.is_available()
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
for package in trl liger_kernel flash_attn vllm; do
    has "$package" && echo "  $package: installed" || echo "  $package: not installed (its part is skipped or runs without it)"
done

if has trl; then
    echo "== training against TRL (bf16, LoRA, batch 32, 512 tokens)"
    timeout 210 "$python" "$here/vs_trl.py" --precision bf16 --lora --batch-size 32 \
        --max-length 512 --scale 8 --workloads pairs,lists --trl-gpu-fastest \
        --json "$out/vs_trl.json" || echo "vs_trl.py did not finish (exit $?)"
    echo "== prefopt rl against TRL's GRPOTrainer (bf16, K = 8)"
    timeout 150 "$python" "$here/rl_vs_trl.py" --precision bf16 --workloads demo:8 --steps 3 \
        --json "$out/rl_vs_trl.json" || echo "rl_vs_trl.py did not finish (exit $?)"
fi

echo "== generation: prefopt, transformers$(has vllm && echo ', vLLM')"
timeout 100 "$python" "$here/generate.py" --precision bf16 --workloads rl_step,demo_round \
    $(has vllm && echo --vllm) --json "$out/generate.json" || echo "generate.py did not finish (exit $?)"

"$python" "$here/gpu_summary.py" "$out"
