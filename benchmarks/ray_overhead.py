"""Ray overhead: `localaug run refine --ray local` vs the plain `localaug run refine`, side by side
on one machine, the same rows, model, prompts and sampling (default model: Qwen2.5-Coder-1.5B-Instruct
Q4_K_M, the Qwen2-1.5B stand-in fetched by fetch-test-models).

    python benchmarks/ray_overhead.py [--model PATH] [--rows 64] [--max-tokens 64] [--parallel 8] [--threads 2] [--rounds 2]

Both sides are the real command as a child process, so each wall time includes start-up and the
model load; the Ray side also starts a local Ray instance (or joins --ray-address), reads and keys
the input on the driver, starts one actor with --threads CPUs and writes part files. Both decode
the same batches (the Ray batch is localaug run's chunk, 4 x --parallel rows), so the difference
is what Ray adds. Rounds alternate the order so drift of a shared machine hits both sides.

Reported per side (median over rounds): wall s, rows/s, output tokens/s, and for the Ray side the
overhead (wall / plain wall - 1; the goal is at most 10%), its start-up (wall minus the time its
actor spent decoding) and the per-actor throughput it measured, which the "on paper" cluster
estimate scales. Outputs are compared row by row (same sampling seeds and batches). Writes
benchmarks/out/ray_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import DEFAULT_MODEL, INSTRUCTIONS  # noqa: E402 - the same 64 rows as the throughput benchmark


def command(args: argparse.Namespace, src: Path, out: Path, ray: bool) -> list[str]:
    cmd = [sys.executable, "-m", "localaug.cli", "run", "refine", "--input", str(src), "--output", str(out),
           "--model", str(args.model), "--prompt-format", "qwen2-chatml", "--parallel", str(args.parallel),
           "--threads", str(args.threads), "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
           "--temperature", "0.5", "--top-p", "0.95", "--top-k", "50", "--ctx", "1024"]
    if ray:
        cmd += ["--ray", args.ray_address, "--actors", "1", "--num-cpus", str(args.threads)]
    return cmd


def run_side(args: argparse.Namespace, src: Path, work: Path, ray: bool) -> tuple[dict[str, float], dict[str, str]]:
    out = work / ("out-ray" if ray else "out-plain.jsonl")
    for p in work.glob(out.name + "*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    env = {**os.environ, "LOCALAUG_HOME": str(work / "home"), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    t0 = time.monotonic()
    proc = subprocess.run(command(args, src, out, ray), capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"localaug run{' --ray' if ray else ''} failed: {proc.stderr.strip()[-2000:]}")
    manifest = json.loads(((out / "manifest.json") if ray else out.with_name(out.name + ".manifest.json")).read_text())
    rows, tokens = manifest["counts"]["rows"], manifest["tokens"]
    # tokens_per_s counts from the first batch sent to work, so tokens / tokens_per_s is the decoding time
    decode_s = tokens / manifest["tokens_per_s"] if manifest["tokens_per_s"] else wall
    r = {"wall_s": wall, "rows": rows, "tokens": tokens, "rows_per_s": rows / wall, "tokens_per_s": tokens / wall,
         "decode_s": decode_s, "startup_s": wall - decode_s, "rows_per_s_per_actor": rows / decode_s,
         "loadavg_1min_after": os.getloadavg()[0]}
    files = sorted(out.glob("part-*.jsonl")) if ray else [out]
    outputs = {rec["source_id"]: rec.get("output") for f in files for rec in map(json.loads, f.read_text().splitlines())}
    return r, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (plain first, then Ray first, ...)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ray-address", default="local", help="local (a fresh instance each run, counted) or a running cluster")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model} not found: run fetch-test-models qwen25-coder-1.5b or pass --model")

    work = args.out / "ray-overhead-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "rows.jsonl"
    rows = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(args.rows)]
    src.write_text("".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\n" for t in rows), encoding="utf-8")

    sides = ["localaug run", f"localaug run --ray {args.ray_address}"]
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    same: list[float] = []
    for rnd in range(args.rounds):
        got: dict[str, dict[str, str]] = {}
        for side in (sides if rnd % 2 == 0 else sides[::-1]):
            r, got[side] = run_side(args, src, work, side != sides[0])
            runs[side].append(r)
            print(f"round {rnd + 1} {side}: {r['wall_s']:.1f} s, {r['rows_per_s']:.3f} rows/s, {r['tokens_per_s']:.1f} tok/s, "
                  f"start-up {r['startup_s']:.1f} s", flush=True)
        plain, ray = got[sides[0]], got[sides[1]]
        same.append(sum(plain.get(k) == v for k, v in ray.items()) / max(len(plain), 1))

    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
    med[sides[1]]["overhead"] = med[sides[1]]["wall_s"] / med[sides[0]]["wall_s"] - 1
    med[sides[1]]["overhead_per_round"] = [r["wall_s"] / p["wall_s"] - 1 for r, p in zip(runs[sides[1]], runs[sides[0]])]
    summary = {
        "model": str(args.model), "rows": args.rows, "max_tokens": args.max_tokens, "parallel": args.parallel,
        "threads": args.threads, "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "rounds": args.rounds, "ray_address": args.ray_address, "same_outputs": same, "median": med, "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_overhead.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print("| side | wall s | rows/s | output tok/s | start-up s | rows/s while decoding | overhead |")
    print("|---|---|---|---|---|---|---|")
    for name, r in med.items():
        over = f"{r['overhead']:+.1%} ({', '.join(f'{x:+.1%}' for x in r['overhead_per_round'])})" if "overhead" in r else "—"
        print(f"| {name} | {r['wall_s']:.1f} | {r['rows_per_s']:.3f} | {r['tokens_per_s']:.1f} | {r['startup_s']:.1f} | "
              f"{r['rows_per_s_per_actor']:.3f} | {over} |")
    print(f"same outputs row for row: {', '.join(f'{x:.0%}' for x in same)}")


if __name__ == "__main__":
    main()
