"""Start-up of ``localaug run``: seconds from the command's start to its first output row, and of an
all-done rerun (every row already in the output) to its exit.

    python benchmarks/startup.py --model MODEL.gguf [--rows 4] [--max-tokens 16] [--reps 3]

Each rep runs a fresh job (a new output file), polling the output every 5 ms for its first
complete line, then reruns it with nothing left to do. The batch size is given through
LOCALAUG_PARALLEL (as a cached calibration would give it: nothing measured), LOCALAUG_HOME is a
folder of this script's own (the model's metadata cache is written by the first rep: the first
rep is a cold start, the others warm), and Python's bytecode is cached under it (as an installed
package has it). Prints one JSON line per rep with the load average beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first_line_seconds(cmd: list[str], env: dict[str, str], output: Path) -> tuple[float, float, int]:
    """(seconds to the first complete output line, seconds to exit, exit code)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = 0.0
    while proc.poll() is None:
        if not first and output.is_file():
            with output.open("rb") as f:
                if b"\n" in f.read(1 << 16):
                    first = time.monotonic() - started
        time.sleep(0.005)
    done = time.monotonic() - started
    return first or done, done, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parallel", default="4")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="localaug-startup-"))
    rows = work / "in.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Name a colour ({i})."}) + "\n" for i in range(args.rows)))
    env = {**os.environ, "LOCALAUG_HOME": str(work / "home"), "LOCALAUG_PARALLEL": args.parallel,
           "PYTHONPYCACHEPREFIX": str(work / "pycache"), "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for rep in range(args.reps):
        out = work / f"out{rep}.jsonl"
        cmd = [sys.executable, "-m", "localaug.cli", "run", "respond", "-i", str(rows), "-o", str(out),
               "-m", args.model, "--max-tokens", str(args.max_tokens)]
        load = [round(x, 2) for x in os.getloadavg()]
        first, whole, rc = first_line_seconds(cmd, env, out)
        _, rerun, rc2 = first_line_seconds(cmd, env, out)
        print(json.dumps({"rep": rep, "first_row_s": round(first, 2), "job_s": round(whole, 2), "rc": rc,
                          "all_done_rerun_s": round(rerun, 2), "rerun_rc": rc2, "load": load}), flush=True)


if __name__ == "__main__":
    main()
