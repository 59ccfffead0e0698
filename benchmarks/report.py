"""`localaug report` at dataset scale: the previous pipeline pieces and the current ones, side by
side in one run, on a synthetic expand output of N rows with English and Chinese instructions.

    python benchmarks/report.py [--rows 2000] [--items 2] [--embed-model GGUF] [--threads 2]
                                [--embed-sample N] [--old-rouge-sample N] [--map-vectors real|standin]

The output is written as `localaug run` writes one (a ledger of expand records and its manifest):
each row a seed instruction (3 in 5 English, 2 in 5 Chinese; 8 to 60 words, a few long ones that
are cut at 256 tokens) with ITEMS new instructions of the same task type and other content, as the
Exp models write them; 1 row in 25 filtered, 1 in 50 failed. The embedding model is the real
SmolLM2-135M GGUF the tests use (~/.cache/localaug-test-models), or --embed-model.

Per phase, old then new (embeddings: after a warm-up, old-new-new-old, the best of each):
- read: the records read and sampled (localaug.report.records.collect, the same both sides);
- embed: texts embedded and their tokens counted (old: the previous runtime.embed, kept here:
  16 texts a llama_decode in one 2,048-cell unified KV cache, every text decoded even when equal,
  then each text tokenized again for the lengths figure; new: runtime.embed.embed_texts).
  --embed-sample N times both on the first N texts only and scales the time to all texts;
- rouge: nearest-neighbour ROUGE-L (old: the pure-Python LCS, kept here verbatim, on the first
  --old-rouge-sample new texts, scaled to all; new: report.metrics.nearest_rouge on all of them),
  and the values of the common texts compared (they must be equal);
- map: t-SNE (old: scikit-learn as before: PCA init, max_iter 750; new: report.build.project),
  with the trustworthiness (k = 10, scikit-learn, on at most 5,000 points) of each map against its
  vectors: the real embeddings when every text was embedded, else a stand-in (each text's hashed
  bag of tokens in 576 dimensions, normalised; --map-vectors standin asks for it);
- charts + page: the map and a lengths PNG and the HTML page (the same code both sides, once);
- imports: `import localaug.report.build` and the report's heavy libraries, each in a fresh
  interpreter (python -X importtime's cumulative figure).

The load average (os.getloadavg) is printed beside each figure: on a shared machine the numbers
move with it. Writes benchmarks/out/report-ROWS.json. `--make-output FOLDER ROWS` only writes the
synthetic output (for timing `localaug report` itself on it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# --- the synthetic output ---------------------------------------------------------------------------

EN_TEMPLATES = [
    "Write a {adj} travel guide for {place}, covering {a}, {b} and {c}.",
    "Create a {n}-day itinerary for a trip to {place} with {a} and {b}, and tips on {c}.",
    "Explain {topic} to {audience} in plain words, with {n} examples and a short summary at the end.",
    "Write a Python function that {task}, then explain its time complexity and test it on {n} inputs.",
    "Draft a {adj} email to {audience} announcing {event}, and mention {a} and {b}.",
    "Compare {topic} and {topic2} for {audience}: strengths, weaknesses and when to choose each.",
    "Summarise the main arguments for and against {topic} in {n} bullet points for {audience}.",
    "Give a step-by-step plan to learn {topic} in {n} weeks, with resources on {a} and {b}.",
]
ZH_TEMPLATES = [
    "请为{place}写一份{adj}旅游指南，包括{a}、{b}和{c}。",
    "制定一个{n}天的{place}旅行计划，安排{a}和{b}，并给出关于{c}的建议。",
    "用通俗易懂的语言向{audience}解释{topic}，并举出{n}个例子。",
    "写一个Python函数，实现{task}，并分析它的时间复杂度。",
    "给{audience}写一封{adj}邮件，通知{event}，并提到{a}和{b}。",
    "比较{topic}和{topic2}的优缺点，说明{audience}应该在什么情况下选择哪一个。",
    "列出支持和反对{topic}的{n}个主要观点，面向{audience}。",
]
EN = {
    "adj": ["detailed", "concise", "friendly", "formal", "practical", "budget-conscious", "family-oriented", "thorough"],
    "place": ["Hangzhou", "Kyoto", "Lisbon", "Bangkok and Phuket", "California", "Istanbul", "Cape Town", "Reykjavik",
              "the Scottish Highlands", "Buenos Aires", "Vancouver", "Marrakesh", "Hanoi", "Prague", "Seoul"],
    "a": ["local food", "museums", "hiking trails", "night markets", "public transport", "lodging by budget",
          "historic sites", "beaches", "day trips", "festivals"],
    "topic": ["gradient descent", "compound interest", "photosynthesis", "public-key cryptography", "inflation",
              "the water cycle", "supply chains", "vaccination", "plate tectonics", "recursion", "remote work",
              "renewable energy", "database indexing", "machine translation", "urban gardening"],
    "audience": ["high-school students", "new employees", "retirees", "a product manager", "beginners",
                 "small-business owners", "parents", "a non-technical client"],
    "task": ["merges two sorted lists", "finds the longest palindrome in a string", "parses a CSV file",
             "computes a moving average", "validates an email address", "deduplicates records by key",
             "counts word frequencies", "converts Roman numerals"],
    "event": ["a new office opening", "a change in the holiday schedule", "the quarterly results",
              "a product launch", "a team reorganisation", "a charity run"],
}
ZH = {
    "adj": ["详细的", "简洁的", "实用的", "适合家庭的", "经济实惠的", "正式的"],
    "place": ["杭州", "成都", "西安", "桂林", "厦门", "云南", "京都", "巴黎", "新疆", "青岛", "苏州", "重庆"],
    "a": ["当地美食", "博物馆", "徒步路线", "夜市", "公共交通", "住宿推荐", "历史古迹", "海滩", "周边一日游"],
    "topic": ["梯度下降", "复利", "光合作用", "公钥加密", "通货膨胀", "水循环", "供应链", "疫苗接种", "递归",
              "可再生能源", "数据库索引", "机器翻译"],
    "audience": ["中学生", "新员工", "退休老人", "产品经理", "初学者", "小企业主", "家长"],
    "task": ["合并两个有序列表", "查找字符串中最长的回文子串", "解析CSV文件", "计算移动平均值", "统计词频"],
    "event": ["新办公室开业", "假期安排调整", "季度业绩", "新产品发布", "团队调整"],
}
EN_TAIL = ["Keep it under 500 words.", "Use headings and short paragraphs.", "Add a table at the end.",
           "Mention common mistakes to avoid.", "Write it in a warm, encouraging tone.", "Cite no sources."]
ZH_TAIL = ["字数控制在500字以内。", "使用小标题和短段落。", "最后附上一张表格。", "指出常见的错误。", "语气要亲切。"]


def _fill(rng: random.Random, zh: bool, template: str | None = None) -> tuple[str, str]:
    words, tails = (ZH, ZH_TAIL) if zh else (EN, EN_TAIL)
    template = template or rng.choice(ZH_TEMPLATES if zh else EN_TEMPLATES)
    slots = {k: rng.choice(v) for k, v in words.items()}
    slots.update(b=rng.choice(words["a"]), c=rng.choice(words["a"]), topic2=rng.choice(words["topic"]), n=rng.randint(2, 9))
    text = template.format(**slots)
    sep = "" if zh else " "
    text += "".join(sep + t for t in rng.sample(tails, rng.randint(0, 3)))
    if rng.random() < 0.02:  # a few long ones: past the 256 tokens that are embedded
        text += sep + sep.join(rng.choice(tails) for _ in range(60))
    return text, template


def make_output(folder: Path, rows: int, items: int = 2, seed: int = 0, model: str | None = None) -> Path:
    """An expand output as `localaug run` writes it: ``expanded.jsonl`` and its manifest."""
    rng = random.Random(seed)
    out = folder / "expanded.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for i in range(rows):
            zh = rng.random() < 0.4
            source, template = _fill(rng, zh)
            rec: dict[str, Any] = {"source_id": f"r{i:06d}", "row": i, "task": "expand", "instruction": source}
            roll = rng.random()
            if roll < 0.02:
                rec.update(status="failed", error="llama_decode failed")
            elif roll < 0.06:
                rec.update(status="filtered", rejected={"near-duplicate": items, "echo": 1})
            else:
                outputs = [_fill(rng, zh, template)[0] for _ in range(items)]
                rec.update(status="ok", outputs=outputs, rejected={"near-duplicate": rng.randint(0, 2)})
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    manifest = {"config": {"task": "expand", "field": "instruction"}, "model": {"path": model} if model else {}}
    (folder / "expanded.jsonl.manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


# --- the previous pipeline pieces, kept verbatim ----------------------------------------------------


def old_embed(engine: Any, texts: list[str], max_tokens: int = 256) -> tuple[np.ndarray, list[int]]:
    """runtime.embed before: 16 texts a llama_decode in one 2,048-cell unified KV cache, then every
    text tokenized again for the lengths figure (the report did that once per side)."""
    import ctypes

    import llama_cpp as L

    from localaug.runtime.llama import TokenBatch

    dim, batch_tokens, max_seqs = engine.n_embd, 2048, 16
    out = np.zeros((len(texts), dim), dtype=np.float32)
    ctx = engine.new_context(batch_tokens, n_seq_max=max_seqs, kv_unified=True, n_batch=batch_tokens, embeddings=True)
    try:
        with TokenBatch(batch_tokens) as batch:
            toks = [(engine.tokenize(t, special=False) or [0])[:max_tokens] for t in texts]
            i = 0
            while i < len(texts):
                group, n = [], 0
                while i < len(texts) and len(group) < max_seqs and n + len(toks[i]) <= batch_tokens:
                    group.append(i)
                    n += len(toks[i])
                    i += 1
                batch.clear()
                for seq, idx in enumerate(group):
                    batch.add(toks[idx], 0, seq, "all")
                L.llama_memory_clear(L.llama_get_memory(ctx), True)
                assert batch.decode(ctx) == 0
                for seq, idx in enumerate(group):
                    ptr = L.llama_get_embeddings_seq(ctx, seq)
                    vec = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(dim,)).copy()
                    out[idx] = vec / (float(np.linalg.norm(vec)) or 1.0)
    finally:
        L.llama_free(ctx)
    lengths = [len(engine.tokenize(t, special=False)) for t in texts]
    return out, lengths


def old_nearest_rouge(new: list[str], others: list[str], seed: int) -> list[float]:
    from localaug.family.text import rouge_l, tokens

    rng = random.Random(seed)
    toks = {t: tokens(t) for t in {*new, *others}}
    out = []
    for text in new:
        candidates = list(others)
        mine = next((i for i, o in enumerate(candidates) if o is text), None)
        if mine is not None:
            del candidates[mine]
        if len(candidates) > 400:
            candidates = rng.sample(candidates, 400)
        out.append(max((rouge_l(toks[text], toks[o]) for o in candidates), default=0.0))
    return out


def old_project(vectors: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(vectors)
    return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed, max_iter=750).fit_transform(vectors)


def standin_vectors(texts: list[str], dim: int = 576) -> np.ndarray:
    """Each text's hashed bag of tokens (the report's tokens), normalised: neighbourhoods like the
    templates' ones, for the map when the texts were not all embedded."""
    import zlib

    from localaug.family.text import tokens

    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in tokens(t):
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    return out


# --- timing ------------------------------------------------------------------------------------------


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, dict[str, Any]]:
    t = time.perf_counter()
    value = fn(*args, **kw)
    return value, {"s": round(time.perf_counter() - t, 2), "load": [round(x, 2) for x in os.getloadavg()]}


def import_time(module: str) -> float:
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    last = [line for line in r.stderr.splitlines() if line.startswith("import time:")][-1]
    return round(int(last.split("|")[1]) / 1e6, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--items", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--embed-model", default=str(Path.home() / ".cache/localaug-test-models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--embed-sample", type=int, default=0, help="embed only the first N texts each side, scale to all (0: all)")
    ap.add_argument("--old-rouge-sample", type=int, default=0, help="old ROUGE-L on the first N new texts, scaled (0: all)")
    ap.add_argument("--map-vectors", choices=["real", "standin"], default="real")
    ap.add_argument("--skip", default="", help="phases to leave out, comma-separated: embed,rouge,map,imports")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))

    from localaug.report import figures, page
    from localaug.report.build import project
    from localaug.report.metrics import nearest_rouge
    from localaug.report.records import collect
    from localaug.runtime.embed import embed_texts
    from localaug.runtime.engine import Engine, EngineOptions

    res: dict[str, Any] = {"rows": a.rows, "machine": f"{os.cpu_count()} CPUs, {os.uname().machine}",
                           "command": " ".join(sys.argv), "embed_model": a.embed_model}
    with tempfile.TemporaryDirectory() as tmp:
        out = make_output(Path(tmp), a.rows, a.items)
        data, res["read"] = timed(collect, out, a.rows, 0)
    texts, outputs = [*data.sources, *data.outputs], data.outputs
    res["texts"], res["new_texts"] = len(texts), len(outputs)
    print(f"{a.rows} rows: {len(texts)} texts ({len(outputs)} new); read {res['read']}", flush=True)
    vecs = None
    if "embed" not in skip:
        n = a.embed_sample or len(texts)
        sub = texts[:n]
        runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        with Engine(a.embed_model, EngineOptions(threads=a.threads), context=False) as engine:
            embed_texts(engine, sub[:8])  # warm: the model's pages read in, a first context made
            for side in ("old", "new", "new", "old"):  # each side once first, once second: the best of two
                if side == "old":
                    (ov, _), took = timed(old_embed, engine, sub)
                else:
                    new_e, took = timed(embed_texts, engine, sub)
                runs[side].append(took)
        old, new = (min(runs[side], key=lambda r: r["s"]) for side in ("old", "new"))
        cos = float((ov * new_e.vectors).sum(axis=1).min())
        for side in (old, new):
            side["s_all"] = round(side["s"] * len(texts) / n, 1)
        res["embed"] = {"texts": n, "old": old, "new": new, "min_cosine_old_new": round(cos, 5)}
        print(f"embed ({n} texts, scaled to {len(texts)}): old {old} new {new}; min cosine {cos:.5f}", flush=True)
        if n == len(texts):
            vecs = new_e.vectors
    if "rouge" not in skip:
        k = a.old_rouge_sample or len(outputs)
        # the old function on the first k new texts draws what the new one draws for them
        ov, old = timed(old_nearest_rouge, outputs[:k], texts, 0)
        nv, new = timed(nearest_rouge, outputs, texts, 0, threads=a.threads)
        old["s_all"] = round(old["s"] * len(outputs) / k, 1)
        res["rouge"] = {"old_texts": k, "old": old, "new": new, "equal": ov == nv[:k]}
        print(f"rouge: old ({k} new texts, scaled) {old} new {new}; values equal: {ov == nv[:k]}", flush=True)
    if "map" not in skip:
        from sklearn.manifold import trustworthiness

        if vecs is None or a.map_vectors == "standin":
            vecs, kind = standin_vectors(texts), "stand-in (hashed bag of tokens)"
        else:
            kind = "real embeddings"
        op, old = timed(old_project, vecs, 0)
        (np_, _), new = timed(project, vecs, 0, None)
        pick = np.random.default_rng(0).choice(len(vecs), min(len(vecs), 5000), replace=False)
        for side, pts in ((old, op), (new, np_)):
            side["trustworthiness_k10"] = round(float(trustworthiness(vecs[pick], pts[pick], n_neighbors=10)), 4)
        res["map"] = {"vectors": kind, "old": old, "new": new}
        print(f"map ({kind}): old {old} new {new}", flush=True)
        (pngs, res["charts"]) = timed(lambda: [figures.diversity_map(np_, [False] * len(data.sources) + [True] * len(outputs), "t-SNE"),
                                               figures.lengths([len(t) for t in data.sources], [len(t) for t in outputs], "characters")])
        _, res["page"] = timed(page.page, "report", [("Map", "".join(page.figure(p, "fig", "f.png") for p in pngs))])
        print(f"charts {res['charts']} page {res['page']}", flush=True)
    if "imports" not in skip:
        res["imports"] = {m: import_time(m) for m in ("localaug.report.build", "openTSNE", "sklearn.manifold", "matplotlib.pyplot", "rapidfuzz.process")}
        print(f"imports (s, fresh interpreter): {res['imports']}", flush=True)
    dest = ROOT / "benchmarks" / "out" / f"report-{a.rows}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1), encoding="utf-8")
    print(dest)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--make-output":
        print(make_output(Path(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
