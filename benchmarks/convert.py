#!/usr/bin/env python3
"""Benchmark ``localaug convert`` against llama.cpp's own ``convert_hf_to_gguf.py``.

    python benchmarks/convert.py [--shape 1.5b|tiny] [--dtype bf16|f16] [--quant F16|BF16]
                                 [--out benchmarks/out] [--reps 2] [--llama-cpp-dir DIR] [--keep-gguf]

1. Writes (once; cached in the out dir) a random-weight bf16 (``--dtype f16``: fp16)
   ``Qwen2ForCausalLM`` checkpoint at the
   real Qwen2-1.5B-Instruct shape (28 layers, hidden 1536, FFN 8960, 12/2 heads, vocab 151936, tied
   embeddings; ~3.1 GB) with the real Qwen2 tokenizer files (``tests/qwen2_fixture.write_tokenizer``).
   The safetensors file is streamed out by hand, tensor by tensor -- no torch model is ever built --
   but names, dtypes, shapes, ordering and the ``{"format": "pt"}`` metadata are what
   ``Qwen2ForCausalLM.save_pretrained`` writes (tied ``lm_head.weight`` omitted).
2. Runs both converters to ``--quant`` (default: the checkpoint's own type, F16 for fp16, BF16 for bf16 --
   the case where the weights pass through unchanged), each in its own subprocess, alternating the order over ``--reps``
   repetitions, measuring wall time and peak memory: (a) the peak over time of the summed RSS of the
   process tree (psutil, polled every 50 ms) and (b) the kernel's ``ru_maxrss`` of the child
   (``os.wait4``: the largest single process, exact, no polling gaps).
3. Compares the two outputs with ``gguf.GGUFReader``: tensor names/types/shapes/bytes (sha256 of
   each tensor's data) and metadata (keys only on one side, keys with different values or types;
   big arrays compared by hash).
4. Prints a report and writes ``convert-<shape>-<dtype>-<quant>.json`` and ``.md`` to the out dir.

llama.cpp's converter is not vendored here: pass ``--llama-cpp-dir`` (the folder holding
``convert_hf_to_gguf.py``), or the script fetches the llama-cpp-python sdist of the installed version
with ``pip download`` into ``<out>/_llama_cpp`` and extracts its ``vendor/llama.cpp`` converter.
It runs with ``PYTHONPATH`` = its own ``gguf-py`` (so it uses its own gguf) and needs torch,
transformers and numpy, as upstream does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _safetensors import write_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    # Qwen2-1.5B(-Instruct): the real shape.
    "1.5b": dict(hidden=1536, ffn=8960, layers=28, heads=12, kv_heads=2, vocab=151936),
    # The shape of tests/qwen2_fixture.build_checkpoint's default: a quick smoke run.
    "tiny": dict(hidden=256, ffn=768, layers=2, heads=4, kv_heads=2, vocab=151936),
}


# ----------------------------------------------------------------------------------------------
# 1. The checkpoint
# ----------------------------------------------------------------------------------------------


def hf_tensors(s: dict) -> dict[str, tuple[int, ...]]:
    """The tensors Qwen2ForCausalLM.save_pretrained writes (tied: no lm_head.weight), HF shapes."""
    h, f, hd = s["hidden"], s["ffn"], s["hidden"] // s["heads"]
    q, kv = s["heads"] * hd, s["kv_heads"] * hd
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s["vocab"], h), "model.norm.weight": (h,)}
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": (h,),
            p + "mlp.down_proj.weight": (h, f),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
        })
    return out


def hf_config(s: dict, dtype: str = "bf16") -> dict:
    """config.json as Qwen/Qwen2-1.5B-Instruct ships it (with this shape)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": s["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": s["ffn"],
        "max_position_embeddings": 32768,
        "max_window_layers": s["layers"],
        "model_type": "qwen2",
        "num_attention_heads": s["heads"],
        "num_hidden_layers": s["layers"],
        "num_key_value_heads": s["kv_heads"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16"}[dtype],
        "transformers_version": "4.40.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": s["vocab"],
    }


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (round to nearest even), as uint16."""
    u = x.astype(np.float32, copy=False).view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")


def _random(name: str, shape: tuple[int, ...], rng: np.random.Generator, out, dtype: str) -> None:
    n = int(np.prod(shape))
    chunk = 1 << 22
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal(m, dtype=np.float32)
        if name.endswith("norm.weight"):
            x = 1.0 + 0.1 * x
        elif name.endswith(".bias"):
            x *= 0.1
        else:
            x *= 0.02
        out.write((_bf16(x) if dtype == "bf16" else x.astype("<f2")).tobytes())


def write_checkpoint(dst: Path, shape: str, seed: int = 0, dtype: str = "bf16") -> Path:
    """Write the checkpoint once; a complete one (marker file) is reused."""
    marker = dst / ".complete"
    if marker.is_file():
        return dst
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    s = SHAPES[shape]
    tensors = hf_tensors(s)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    total = sum(int(np.prod(v)) * 2 for v in tensors.values())
    print(f"writing {shape} checkpoint ({total / 1e9:.2f} GB) to {dst} ...", flush=True)
    write_bf16(dst / "model.safetensors", tensors, lambda name, shp, f: _random(name, shp, rng, f, dtype),
               dtype={"bf16": "BF16", "f16": "F16"}[dtype])
    (dst / "config.json").write_text(json.dumps(hf_config(s, dtype), indent=2) + "\n")
    (dst / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
        "repetition_penalty": 1.1, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "transformers_version": "4.40.1",
    }, indent=2) + "\n")
    sys.path.insert(0, str(ROOT))
    from tests.qwen2_fixture import write_tokenizer

    write_tokenizer(dst)
    marker.write_text("ok\n")
    print(f"  checkpoint written in {time.monotonic() - t0:.0f} s", flush=True)
    return dst


# ----------------------------------------------------------------------------------------------
# 2. The reference converter and the measured runs
# ----------------------------------------------------------------------------------------------


def llama_cpp_dir(arg: str | None, out: Path) -> Path:
    if arg:
        d = Path(arg)
        if not (d / "convert_hf_to_gguf.py").is_file():
            sys.exit(f"{d} has no convert_hf_to_gguf.py")
        return d
    from importlib.metadata import version

    ver = version("llama-cpp-python")
    base = out / "_llama_cpp" / ver
    d = base / "llama.cpp"
    if (d / "convert_hf_to_gguf.py").is_file():
        return d
    dl = base / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    print(f"fetching llama-cpp-python {ver} sdist for its convert_hf_to_gguf.py ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={ver}", "-d", str(dl)], check=True)
    sdist = next(dl.glob("llama_cpp_python-*.tar.gz"))
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            parts = m.name.split("/", 3)  # llama_cpp_python-X/vendor/llama.cpp/<rest>
            if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3].startswith(wanted) and (m.isfile() or m.isdir()):
                m.name = parts[3]
                tar.extract(m, d, filter="data") if hasattr(tarfile, "data_filter") else tar.extract(m, d)
    return d


def _dirty_mib() -> float | None:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return round((int(info["Dirty"].split()[0]) + int(info["Writeback"].split()[0])) / 1024, 1)
    except (OSError, KeyError, ValueError):
        return None


def measure(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``; wall time, peak summed RSS of its process tree (psutil), and ru_maxrss (kernel)."""
    import psutil

    t0 = time.monotonic()
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        ps = psutil.Process(proc.pid)
        peak_tree = 0
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            total = 0
            try:
                procs = [ps] + ps.children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak_tree = max(peak_tree, total)
            time.sleep(0.05)
    wall = time.monotonic() - t0
    dirty = _dirty_mib()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "cmd": cmd,
        "rc": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_tree_mib": round(peak_tree / 2**20, 1),
        "ru_maxrss_mib": round(ru.ru_maxrss / 1024, 1),  # Linux: KiB
        "dirty_at_exit_mib": dirty,  # system-wide Dirty+Writeback: output not yet on disk (we fsync, llama.cpp does not)
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
    }


# ----------------------------------------------------------------------------------------------
# 3. Comparison
# ----------------------------------------------------------------------------------------------


def _field_value(field):
    import gguf

    kind = field.types[0] if field.types else None
    sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
    value = field.contents()
    tname = kind.name if kind is not None else "?"
    if sub is not None:
        tname = f"ARRAY[{sub.name}]"
    if isinstance(value, list) and len(value) > 16:
        blob = json.dumps(value, ensure_ascii=False).encode()
        return tname, {"len": len(value), "sha256": hashlib.sha256(blob).hexdigest()[:16]}
    return tname, value


def describe(path: Path) -> tuple[dict, dict]:
    import gguf

    r = gguf.GGUFReader(path)
    meta = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = _field_value(field)
    tensors = {}
    for t in r.tensors:
        tensors[t.name] = {
            "type": t.tensor_type.name,
            "shape": [int(x) for x in t.shape],
            "nbytes": int(t.n_bytes),
            "sha256": hashlib.sha256(memoryview(np.ascontiguousarray(t.data)).cast("B")).hexdigest()[:16],
        }
    return meta, tensors


NAMING_KEYS = ("general.name", "general.basename", "general.finetune", "general.size_label")


def compare(a: Path, b: Path) -> dict:
    meta_a, ten_a = describe(a)
    meta_b, ten_b = describe(b)
    same = [n for n in ten_a if n in ten_b and ten_a[n] == ten_b[n]]
    diff = {n: {"localaug": ten_a[n], "llama.cpp": ten_b[n]} for n in ten_a if n in ten_b and ten_a[n] != ten_b[n]}
    meta_diff = {}
    for k in sorted(set(meta_a) & set(meta_b)):
        if meta_a[k] != meta_b[k]:
            meta_diff[k] = {"localaug": meta_a[k], "llama.cpp": meta_b[k]}
    return {
        "tensors": {
            "count": [len(ten_a), len(ten_b)],
            "identical": len(same),
            "only_localaug": sorted(set(ten_a) - set(ten_b)),
            "only_llama_cpp": sorted(set(ten_b) - set(ten_a)),
            "different": diff,
            "order_same": list(ten_a) == list(ten_b),
            "all_identical": len(same) == len(ten_a) == len(ten_b),
        },
        "metadata": {
            "only_localaug": {k: meta_a[k] for k in sorted(set(meta_a) - set(meta_b))},
            "only_llama_cpp": {k: meta_b[k] for k in sorted(set(meta_b) - set(meta_a))},
            "different": meta_diff,
            "different_naming_only": sorted(k for k in meta_diff if k in NAMING_KEYS),
            "same": sorted(k for k in set(meta_a) & set(meta_b) if k not in meta_diff),
        },
        "file_bytes": [a.stat().st_size, b.stat().st_size],
    }


# ----------------------------------------------------------------------------------------------
# 4. Report
# ----------------------------------------------------------------------------------------------


def machine() -> dict:
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import psutil

    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def markdown(rep: dict) -> str:
    s = rep["summary"]
    lines = [
        f"# localaug convert vs llama.cpp convert_hf_to_gguf.py ({rep['shape']}, {rep['dtype']} -> {rep['quant']})",
        "",
        f"Machine: {rep['machine']['cpu']}, {rep['machine']['cores']} cores, {rep['machine']['ram_gib']} GiB RAM. "
        f"Checkpoint: {rep['checkpoint_gb']:.2f} GB {rep['dtype']}. Load average at start: {rep['loadavg']}. Repetitions: {rep['reps']} (order alternated).",
        "",
        "| | localaug | llama.cpp | ratio (localaug / llama.cpp) |",
        "|---|---:|---:|---:|",
        f"| wall time, median (s) | {s['localaug']['wall_s']} | {s['llama.cpp']['wall_s']} | {s['ratio']['wall']:.2f} (speed-up {1 / s['ratio']['wall']:.2f}x) |",
        f"| peak RSS, process tree, median (MiB) | {s['localaug']['peak_rss_tree_mib']} | {s['llama.cpp']['peak_rss_tree_mib']} | {s['ratio']['rss_tree']:.2f} |",
        f"| ru_maxrss, median (MiB) | {s['localaug']['ru_maxrss_mib']} | {s['llama.cpp']['ru_maxrss_mib']} | {s['ratio']['ru_maxrss']:.2f} |",
        f"| CPU user+sys, median (s) | {s['localaug']['cpu_s']} | {s['llama.cpp']['cpu_s']} | {s['ratio']['cpu']:.2f} |",
        "",
        "Runs (in order):",
        "",
        "| # | tool | wall (s) | tree RSS (MiB) | ru_maxrss (MiB) | user (s) | sys (s) | dirty at exit (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rep["runs"]):
        lines.append(f"| {i} | {r['tool']} | {r['wall_s']} | {r['peak_rss_tree_mib']} | {r['ru_maxrss_mib']} | {r['user_s']} | {r['sys_s']} | {r['dirty_at_exit_mib']} |")
    c = rep["compare"]
    t, m = c["tensors"], c["metadata"]
    lines += [
        "",
        f"Tensors: {t['identical']}/{t['count'][1]} identical (name, type, shape, sha256 of data); "
        f"only localaug: {t['only_localaug'] or 'none'}; only llama.cpp: {t['only_llama_cpp'] or 'none'}; "
        f"different: {list(t['different']) or 'none'}; same order: {t['order_same']}.",
        f"File sizes: localaug {c['file_bytes'][0]:,} B, llama.cpp {c['file_bytes'][1]:,} B.",
        "",
        "Metadata keys only in localaug's file: " + (", ".join(f"`{k}`" for k in m["only_localaug"]) or "none"),
        "",
        "Metadata keys only in llama.cpp's file: " + (", ".join(f"`{k}`" for k in m["only_llama_cpp"]) or "none"),
        "",
        "Metadata keys with different values:" + (" none" if not m["different"] else ""),
    ]
    for k, v in m["different"].items():
        lines.append(f"- `{k}`: localaug {json.dumps(v['localaug'], ensure_ascii=False)[:200]} / "
                     f"llama.cpp {json.dumps(v['llama.cpp'], ensure_ascii=False)[:200]}")
    lines += ["", f"Identical metadata keys: {len(m['same'])}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1.5b")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per tool (order alternates)")
    ap.add_argument("--dtype", choices=("bf16", "f16"), default="bf16", help="the checkpoint's weight type")
    ap.add_argument("--quant", choices=("F16", "BF16"), default=None, help="output type (default: the checkpoint's)")
    ap.add_argument("--llama-cpp-dir", help="folder with llama.cpp's convert_hf_to_gguf.py (default: pip download)")
    ap.add_argument("--keep-gguf", action="store_true", help="keep the two GGUF outputs")
    args = ap.parse_args()

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    quant = args.quant or args.dtype.upper()
    loadavg = [round(x, 2) for x in os.getloadavg()]
    ckpt = write_checkpoint(out / f"qwen2-{args.shape}-random-{args.dtype}", args.shape, dtype=args.dtype)
    ref = llama_cpp_dir(args.llama_cpp_dir, out).resolve()
    ckpt_gb = sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 1e9

    a_out, b_out = out / f"localaug-{args.shape}.{quant}.gguf", out / f"llamacpp-{args.shape}.{quant}.gguf"
    localaug_bin = shutil.which("localaug", path=str(Path(sys.executable).parent)) or shutil.which("localaug")
    cmds = {
        "localaug": ([localaug_bin, "convert", str(ckpt), "--quant", quant, "-o", str(a_out)] if localaug_bin else
                     [sys.executable, "-m", "localaug.cli", "convert", str(ckpt), "--quant", quant, "-o", str(a_out)]),
        "llama.cpp": [sys.executable, str(ref / "convert_hf_to_gguf.py"), str(ckpt), "--outtype", quant.lower(), "--outfile", str(b_out)],
    }
    envs = {"localaug": dict(os.environ), "llama.cpp": dict(os.environ)}
    envs["llama.cpp"]["PYTHONPATH"] = os.pathsep.join([str(ref / "gguf-py")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    envs["localaug"]["PYTHONUNBUFFERED"] = envs["llama.cpp"]["PYTHONUNBUFFERED"] = "1"
    envs["localaug"]["NO_COLOR"] = "1"

    runs = []
    order = ["localaug", "llama.cpp"]
    for rep in range(args.reps):
        for tool in (order if rep % 2 == 0 else order[::-1]):
            dst = a_out if tool == "localaug" else b_out
            dst.unlink(missing_ok=True)
            subprocess.run(["sync"])
            print(f"[rep {rep}] {tool} ...", flush=True)
            r = measure(cmds[tool], envs[tool], out / f"{tool}-{args.shape}-rep{rep}.log")
            r["tool"] = tool
            runs.append(r)
            print(f"  rc={r['rc']} wall={r['wall_s']} s tree-RSS={r['peak_rss_tree_mib']} MiB ru_maxrss={r['ru_maxrss_mib']} MiB", flush=True)
            if r["rc"] != 0:
                print((out / f"{tool}-{args.shape}-rep{rep}.log").read_text()[-3000:])
                return 1

    def med(tool: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs if r["tool"] == tool), 2)

    summary = {t: {k: med(t, k) for k in ("wall_s", "peak_rss_tree_mib", "ru_maxrss_mib")} for t in order}
    for t in order:
        summary[t]["cpu_s"] = round(statistics.median(r["user_s"] + r["sys_s"] for r in runs if r["tool"] == t), 2)
    L, R = summary["localaug"], summary["llama.cpp"]
    summary["ratio"] = {
        "wall": L["wall_s"] / R["wall_s"],
        "rss_tree": L["peak_rss_tree_mib"] / R["peak_rss_tree_mib"],
        "ru_maxrss": L["ru_maxrss_mib"] / R["ru_maxrss_mib"],
        "cpu": L["cpu_s"] / R["cpu_s"],
    }
    print("comparing outputs ...", flush=True)
    comparison = compare(a_out, b_out)
    report = {
        "shape": args.shape,
        "dtype": args.dtype,
        "quant": quant,
        "loadavg": loadavg,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "checkpoint": str(ckpt),
        "checkpoint_gb": ckpt_gb,
        "llama_cpp_dir": str(ref),
        "reps": args.reps,
        "memory_method": "peak_rss_tree: psutil, every 50 ms, sum of RSS over the process and all descendants "
                         "(file-backed mmap pages count); ru_maxrss: os.wait4 rusage of the child (kernel high-water mark "
                         "of the largest single process)",
        "runs": runs,
        "summary": summary,
        "compare": comparison,
    }
    name = f"convert-{args.shape}-{args.dtype}-{quant}"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    md = markdown(report)
    (out / f"{name}.md").write_text(md)
    print(md)
    if not args.keep_gguf:
        a_out.unlink(missing_ok=True)
        b_out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
