#!/usr/bin/env bash
# GPU figures in one command, for an NVIDIA machine with no network (llama.cpp built from a carried
# llama-cpp-python sdist; the localaug test model at its usual place or given):
#
#   bash benchmarks/gpu.sh SDIST.tar.gz [MODEL.gguf] [CUDA_ARCH]
#
# 1. builds llama-cpp-python with CUDA into the active environment (build tools must be installed:
#    scikit-build-core, cmake, ninja; nothing is downloaded: --no-index --no-build-isolation);
# 2. single-stream decode and prefill: `localaug bench` (localaug's engine) next to raw llama_decode
#    (`localaug bench --batch` prints both at B = 1 ... 256);
# 3. `localaug run refine` batch throughput with its defaults and at --parallel 16, 64, 256 vs a
#    llama-cpp-python create_completion loop on the same prompt strings (benchmarks/throughput.py);
# 4. the serve prompt-cache TTFT (benchmarks/serve.py --ttft);
# 5. the per-token overhead of sampling: llama_sampler_sample vs localaug's pick on the GPU's logits
#    [64, n_vocab], ms per sequence per token, greedy and top-k (benchmarks/sampling.py).
# Everything lands in benchmarks/out/gpu/ (logs, JSON, the printed tables in summary.txt).
set -euo pipefail
SDIST=${1:?usage: bash benchmarks/gpu.sh SDIST.tar.gz [MODEL.gguf] [CUDA_ARCH]}
MODEL=${2:-${LOCALAUG_TEST_MODELS:-$HOME/.cache/localaug-test-models}/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}
ARCH=${3:-90}
OUT=benchmarks/out/gpu
mkdir -p "$OUT"
exec > >(tee "$OUT/summary.txt") 2>&1

CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DLLAVA_BUILD=OFF" \
  python -m pip install --no-index --no-build-isolation --force-reinstall --no-deps "$SDIST"
python -m pip install --no-index --no-build-isolation --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import llama_cpp as L; print('GPU offload:', L.llama_supports_gpu_offload())"

python -m localaug.cli bench --model "$MODEL" --tokens 128
python -m localaug.cli bench --model "$MODEL" --tokens 64 --batch
python benchmarks/throughput.py --model "$MODEL" --rows 256 --max-tokens 64 --threads 4 --rounds 2 \
  --parallel 16 64 256 --out "$OUT"
python benchmarks/serve.py --ttft --model "$MODEL" --threads 4 --out "$OUT"
python benchmarks/sampling.py --model "$MODEL" --batch 64 --steps 20 | tee "$OUT/sampling.jsonl"
python - "$OUT/sampling.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    ms = r["ms_per_sequence_token"]
    print(f"per-token sampling overhead, {r['setting']}, logits {r['shape']}: "
          f"llama_sampler_sample {ms['llama_sampler_sample']:.3f} ms, pick {ms['pick']:.3f} ms per sequence per token "
          f"({r['speedup']}x; same tokens: {r['same_tokens']})")
PY
