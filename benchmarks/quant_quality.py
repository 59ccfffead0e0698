#!/usr/bin/env python3
"""How much each quantization costs: KL divergence and top-1 agreement against F16.

    python benchmarks/quant_quality.py [--gguf PATH] [--out benchmarks/out] [--quants Q8_0,Q6_K,Q5_K_M,Q4_K_M]
                                       [--threads 2] [--max-tokens 500] [--skip 32] [--clean]

There are no pristine Qwen2 safetensors on the benchmark machine, so the best real weights at
hand are used: the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF that ``/work/shared/tools/fetch-test-models
qwen25-coder-1.5b`` provides (qwen2 arch, Qwen2-1.5B shape; default path
``~/.cache/localaug-test-models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf``, or ``--gguf``).

1. It is turned back into a Hugging Face checkpoint (cached in the out dir): every tensor is
   dequantized with ``gguf.quants.dequantize``, renamed with the inverse of ``localaug.convert.qwen2``'s
   tables (qwen2 has no q/k permutation; GGUF dims are the reverse of HF's, which is exactly the
   numpy shape the dequantizer returns) and stored as bf16 safetensors, with a config.json built
   from the GGUF hparams and the Qwen2 tokenizer of ``tests/qwen2_fixture.write_tokenizer``
   (same 151643 BPE tokens; only 3 specials, fine for text). That GGUF carries a separate
   ``output.weight`` (Q6_K), so the checkpoint is untied (``lm_head.weight``).
2. ``localaug convert`` makes F16, Q8_0, Q6_K, Q5_K_M and Q4_K_M from it.
3. llama.cpp (llama-cpp-python, ``logits_all=True``) computes the logits of every model over the
   same few hundred tokens of English prose, Chinese prose and Python code. As llama-perplexity's
   ``--kl-divergence``: KL = mean over positions of sum_v p_F16(v) (log p_F16(v) - log p_q(v));
   top-1 = fraction of positions whose argmax agrees with F16's. Also shown: perplexity of each
   model on the text's next tokens, and the file size. The first ``--skip`` (32) positions are left
   out of the main figures -- llama-perplexity likewise scores only the second half of each window;
   a single no-context position (e.g. the very first) can have a KL of several nats and would
   dominate a mean over a few hundred tokens -- the all-positions mean is shown beside it.
   The converted GGUFs stay in the out dir as a cache (``--clean`` removes them).

Caveat, printed with the table: these weights already went through Q4_K_M once (then bf16), so
the absolute losses understate what quantizing pristine weights costs (re-quantizing to Q4_K_M
lands close to the grid the weights came from). The ordering and relative sizes still inform.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _safetensors import write_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GGUF = Path(os.environ.get("LOCALAUG_TEST_MODELS", Path.home() / ".cache" / "localaug-test-models")) / (
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
)

TEXT_EN = (
    "The old lighthouse keeper had kept a logbook for forty years, and every entry began the same way: "
    "the date, the wind, the colour of the sea at dawn. Most days were unremarkable. A fishing boat "
    "returned late, a gull nested on the railing, fog rolled in from the south and lifted again by noon. "
    "But when the harbour authority finally replaced the lamp with an automatic beacon, the keeper "
    "realised that the logbook had become something else entirely: a record of a coastline slowly "
    "changing, of storms that grew more frequent, and of a town that had learned to live with the water "
    "rather than against it. He donated the books to the library, where students still read them."
)
TEXT_ZH = (
    "清晨的江南小镇笼罩在薄雾之中，石板路上还残留着昨夜的雨水。河边的茶馆已经开门，老板一边烧水，"
    "一边和早起的客人聊着今年的收成。镇上的年轻人大多去了城市工作，只有节假日才会回来看望父母。"
    "近几年，随着乡村旅游的发展，越来越多的游客来到这里，欣赏古老的建筑，品尝地道的小吃。"
    "当地政府修缮了老街，开设了手工艺作坊，让传统技艺得以传承。人们相信，只要守住这份宁静与文化，"
    "小镇就能在现代化的浪潮中找到自己的位置。"
)
TEXT_PY = '''def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping closed intervals and return them sorted by start."""
    if not intervals:
        return []
    ordered = sorted(intervals, key=lambda iv: iv[0])
    merged = [ordered[0]]
    for start, end in ordered[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


if __name__ == "__main__":
    print(merge_intervals([(1, 3), (2, 6), (8, 10), (15, 18)]))
'''
TEXT = TEXT_EN + "\n\n" + TEXT_ZH + "\n\n" + TEXT_PY


# ----------------------------------------------------------------------------------------------
# 1. GGUF -> Hugging Face checkpoint
# ----------------------------------------------------------------------------------------------


def hf_name(gguf_name: str) -> str:
    from localaug.convert import qwen2

    inv_global = {g: h for h, g in qwen2.GLOBAL_TENSORS.items()}
    inv_block = {g: h for h, g in qwen2.BLOCK_TENSORS.items()}
    if gguf_name in inv_global:
        return inv_global[gguf_name]
    blk, bid, rest = gguf_name.split(".", 2)
    if blk != "blk" or rest not in inv_block:
        raise SystemExit(f"unexpected tensor {gguf_name} in the GGUF")
    return f"model.layers.{int(bid)}.{inv_block[rest]}"


def _bf16(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")


def gguf_to_hf(src: Path, dst: Path) -> Path:
    if (dst / ".complete").is_file():
        return dst
    import gguf

    dst.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    r = gguf.GGUFReader(src)

    def kv(key):
        return r.fields[key].contents() if key in r.fields else None

    arch = kv("general.architecture")
    if arch != "qwen2":
        raise SystemExit(f"{src} is a {arch} GGUF, need qwen2")
    tensors = {hf_name(t.name): t for t in r.tensors}
    shapes = {n: tuple(int(d) for d in reversed(t.shape.tolist())) for n, t in tensors.items()}
    total = sum(int(np.prod(v)) * 2 for v in shapes.values())
    print(f"dequantizing {len(tensors)} tensors of {src.name} into {dst} ({total / 1e9:.2f} GB bf16) ...", flush=True)

    def fill(name: str, shape: tuple[int, ...], f) -> None:
        t = tensors[name]
        f.write(_bf16(gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)).tobytes())

    write_bf16(dst / "model.safetensors", shapes, fill)
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": int(kv("tokenizer.ggml.bos_token_id") or 151643),
        "eos_token_id": int(kv("tokenizer.ggml.eos_token_id") or 151645),
        "hidden_act": "silu",
        "hidden_size": int(kv("qwen2.embedding_length")),
        "initializer_range": 0.02,
        "intermediate_size": int(kv("qwen2.feed_forward_length")),
        "max_position_embeddings": int(kv("qwen2.context_length")),
        "max_window_layers": int(kv("qwen2.block_count")),
        "model_type": "qwen2",
        "num_attention_heads": int(kv("qwen2.attention.head_count")),
        "num_hidden_layers": int(kv("qwen2.block_count")),
        "num_key_value_heads": int(kv("qwen2.attention.head_count_kv")),
        "rms_norm_eps": float(np.float32(kv("qwen2.attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(kv("qwen2.rope.freq_base")),
        "sliding_window": int(kv("qwen2.context_length")),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": n_vocab,
    }
    if abs(config["rms_norm_eps"] - 1e-6) < 1e-9:
        config["rms_norm_eps"] = 1e-6
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    sys.path.insert(0, str(ROOT))
    from tests.qwen2_fixture import write_tokenizer

    write_tokenizer(dst)
    (dst / ".complete").write_text("ok\n")
    print(f"  checkpoint written in {time.monotonic() - t0:.0f} s", flush=True)
    return dst


# ----------------------------------------------------------------------------------------------
# 2. Conversions, 3. logits
# ----------------------------------------------------------------------------------------------


def convert(ckpt: Path, quant: str, out: Path) -> tuple[Path, float]:
    dst = out / f"{ckpt.name}.{quant}.gguf"
    if dst.is_file():
        return dst, float("nan")
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "localaug.cli", "convert", str(ckpt), "--quant", quant, "-o", str(dst)]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    return dst, time.monotonic() - t0


def logits(model: Path, tokens: list[int], threads: int) -> np.ndarray:
    """float32 logits, shape (len(tokens), n_vocab): row i predicts token i+1."""
    from llama_cpp import Llama

    n_ctx = max(512, ((len(tokens) + 63) // 64) * 64)
    llm = Llama(str(model), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
                logits_all=True, verbose=False, use_mmap=True)
    llm.reset()
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float32, copy=True)
    llm.close() if hasattr(llm, "close") else None
    del llm
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(base_logits: np.ndarray, q_logits: np.ndarray, tokens: list[int], skip: int) -> dict:
    """KL/top-1/PPL over positions >= skip (scored positions have context, as in llama-perplexity,
    which scores only the second half of each window); ``kl_mean_all`` includes the first ones."""
    kls, same, nll = [], [], []
    for i in range(len(tokens)):  # row by row: (positions x 151936) float64 would be large
        lp = log_softmax(base_logits[i])
        lq = log_softmax(q_logits[i])
        kls.append(float(np.sum(np.exp(lp) * (lp - lq))))
        same.append(int(np.argmax(lp) == np.argmax(lq)))
        nll.append(-float(lq[tokens[i + 1]]) if i + 1 < len(tokens) else np.nan)
    kls_a, same_a, nll_a = np.array(kls), np.array(same), np.array(nll)
    k = kls_a[skip:]
    return {
        "kl_mean": float(k.mean()),
        "kl_median": float(np.median(k)),
        "kl_p99": float(np.percentile(k, 99)),
        "kl_max": float(k.max()),
        "kl_mean_all": float(kls_a.mean()),
        "kl_max_all": float(kls_a.max()),
        "kl_argmax_all": int(kls_a.argmax()),
        "top1_agree": float(same_a[skip:].mean()),
        "top1_agree_all": float(same_a.mean()),
        "ppl": float(np.exp(np.nanmean(nll_a[skip:]))),
        "kl_per_position": [round(x, 6) for x in kls],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF, help="the real Qwen2-arch GGUF to start from")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--quants", default="Q8_0,Q6_K,Q5_K_M,Q4_K_M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=500)
    ap.add_argument("--skip", type=int, default=32, help="leave the first N positions out of the figures (no context yet)")
    ap.add_argument("--clean", action="store_true", help="delete the converted GGUFs at the end (default: keep them as a cache)")
    args = ap.parse_args()
    if not args.gguf.is_file():
        sys.exit(f"{args.gguf} not found: run /work/shared/tools/fetch-test-models qwen25-coder-1.5b or pass --gguf")

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = gguf_to_hf(args.gguf.resolve(), out / "qwen25-coder-1.5b-from-q4km-bf16")
    quants = [q.strip().upper() for q in args.quants.split(",") if q.strip()]

    models: dict[str, Path] = {}
    conv_s: dict[str, float] = {}
    for q in ["F16"] + quants:
        print(f"converting {q} ...", flush=True)
        models[q], conv_s[q] = convert(ckpt, q, out)

    from llama_cpp import Llama

    tok_model = Llama(str(models["F16"]), vocab_only=True, verbose=False)
    tokens = tok_model.tokenize(TEXT.encode("utf-8"), add_bos=False, special=False)[: args.max_tokens]
    segs = {name: len(tok_model.tokenize(t.encode("utf-8"), add_bos=False, special=False))
            for name, t in (("english", TEXT_EN), ("chinese", TEXT_ZH), ("python", TEXT_PY))}
    del tok_model
    print(f"{len(tokens)} tokens ({segs})", flush=True)

    t0 = time.monotonic()
    base = logits(models["F16"], tokens, args.threads)
    print(f"  F16 logits in {time.monotonic() - t0:.0f} s", flush=True)
    rows = []
    f16_size = models["F16"].stat().st_size
    entries = [(q, models[q]) for q in quants] + [("source Q4_K_M GGUF", args.gguf.resolve())]
    base_stats = compare(base, base, tokens, args.skip)
    rows.append({"quant": "F16", "bytes": f16_size, **base_stats})
    for q, path in entries:
        t0 = time.monotonic()
        ql = logits(path, tokens, args.threads)
        stats = compare(base, ql, tokens, args.skip)
        del ql
        rows.append({"quant": q, "bytes": path.stat().st_size, **stats})
        print(f"  {q}: KL {stats['kl_mean']:.5f} top-1 {stats['top1_agree']:.3f} ({time.monotonic() - t0:.0f} s)", flush=True)

    note = ("The weights already went through Q4_K_M once (Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, dequantized, stored as bf16), "
            "so absolute losses understate what quantizing pristine weights costs -- re-quantizing to Q4_K_M in particular "
            "lands near the grid the weights came from. Ordering and relative sizes are still informative. "
            "The last row is the source GGUF itself vs our F16 of its dequantized weights (bf16 rounding + "
            "different per-tensor types).")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "source_gguf": str(args.gguf),
        "checkpoint": str(ckpt),
        "n_tokens": len(tokens),
        "skip": args.skip,
        "segments_tokens": segs,
        "threads": args.threads,
        "definitions": "KL = mean over positions of KL(p_F16 || p_quant) in nats; top-1 = fraction of positions "
                       "whose argmax equals F16's (llama-perplexity --kl-divergence); PPL = exp(mean NLL of the next token)",
        "convert_seconds": conv_s,
        "rows": rows,
        "note": note,
    }
    (out / "quant_quality.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = [
        f"# Quantization quality vs F16 (Qwen2.5-Coder-1.5B-Instruct weights, {len(tokens)} tokens)",
        "",
        f"| type | file size (MiB) | size vs F16 | mean KL (nats) | median KL | p99 KL | max KL | top-1 agreement | PPL | mean KL incl. first {args.skip} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['quant']} | {r['bytes'] / 2**20:.0f} | {r['bytes'] / f16_size:.2f} | {r['kl_mean']:.5f} | "
                     f"{r['kl_median']:.5f} | {r['kl_p99']:.4f} | {r['kl_max']:.3f} | {100 * r['top1_agree']:.1f}% | {r['ppl']:.3f} | "
                     f"{r['kl_mean_all']:.5f} (max {r['kl_max_all']:.2f} at position {r['kl_argmax_all']}) |")
    lines += ["", f"Tokens: {segs} (English prose, Chinese prose, Python code; truncated to {len(tokens)}); "
              f"figures over positions {args.skip}..{len(tokens) - 1} ({len(tokens) - args.skip} positions), the last column over all.",
              "", note, ""]
    md = "\n".join(lines)
    (out / "quant_quality.md").write_text(md)
    print(md)
    if args.clean:
        for q, p in models.items():
            p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
