#!/usr/bin/env bash
# "Did it help?" on a real model, offline: refine seed instructions, answer the seeds and the refined
# versions with the same responder, judge the two answer sets in both orders, draw the report.
#
#   bash benchmarks/did_it_help.sh [MODEL.gguf] [ROWS]
#
# MODEL (default: the Qwen2.5-Coder-1.5B-Instruct Q4_K_M stand-in) is refiner (teacher mode),
# responder and judge at once; a 1.5B judge is weak, so read the figures as a demonstration of the
# tools, not as a verdict on refinement. Everything lands in benchmarks/out/did-it-help/.
set -euo pipefail
MODEL=${1:-${LOCALAUG_TEST_MODELS:-$HOME/.cache/localaug-test-models}/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}
ROWS=${2:-24}
OUT=benchmarks/out/did-it-help
mkdir -p "$OUT"
python - "$OUT/seeds.jsonl" "$ROWS" <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from teacher_echo import SEEDS
rows = [s for s in SEEDS if all(ord(c) < 0x3000 for c in s)][: int(sys.argv[2])]
open(sys.argv[1], "w").write("".join(json.dumps({"instruction": s}) + "\n" for s in rows))
PY
COMMON=(--model "$MODEL" --threads 2 --seed 0)
python -m localaug.cli run refine  -i "$OUT/seeds.jsonl"   -o "$OUT/refined.jsonl" "${COMMON[@]}" --max-tokens 256
python -m localaug.cli run respond -i "$OUT/seeds.jsonl"   -o "$OUT/a.jsonl" "${COMMON[@]}" --max-tokens 512 --temperature 0
python -m localaug.cli run respond -i "$OUT/refined.jsonl" -o "$OUT/b.jsonl" "${COMMON[@]}" --max-tokens 512 --temperature 0
python -m localaug.cli report "$OUT/refined.jsonl" --html "$OUT/report.html" --threads 2
for aspect in detail truthfulness; do
  python -m localaug.cli judge "$OUT/a.jsonl" "$OUT/b.jsonl" --judge "$MODEL" --aspect "$aspect" --threads 2 \
    --max-tokens 384 --html "$OUT/report.html" --json > "$OUT/judge-$aspect.json"
done
cat "$OUT"/judge-*.json
