"""Conversion proven against independent references: transformers' Qwen2 and the HF tokenizer.

Everything expected here comes from outside the converter: logits and greedy tokens from
``transformers.Qwen2ForCausalLM`` run on the checkpoint folder, token ids from the Hugging Face
tokenizer, metadata values from the checkpoint's own config.json / tokenizer files, weight values
from the safetensors files (read with ``safetensors``, not with localaug's streaming reader).
The GGUF side is read by llama.cpp (logits, tokens, generation), by gguf-py's ``GGUFReader``
(metadata, tensor data) and, for tensor types across all output types, by a few lines of header
parsing below (``GGUFReader`` needs ~7 s per file to parse the 150k-entry vocabulary arrays).

Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch

KINDS = ("tied", "untied")
N_CTX = 256
GGML = gguf.GGMLQuantizationType

# Logits probe: English, Chinese, code and emoji in one text (70 tokens).
PROBE = (
    "The quick brown fox 🦊 jumps over the lazy dog. 人工智能正在改变世界，我们一起学习吧！\n"
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 🚀\n"
    "print(fib(10))  # 55 ✅"
)

# Longer probe for the quantization statistics (227 tokens, no repeated passage; must fit N_CTX).
LONG_PROBE = (
    "Once upon a time, in a small village by the sea, there lived an old fisherman who told "
    "stories about the stars. 从前，在海边的一个小村庄里，住着一位会讲星星故事的老渔夫。\n\n"
    "```python\nimport json\n\nclass Cache:\n    def __init__(self, size: int = 128) -> None:\n"
    "        self.data: dict[str, bytes] = {}\n\n    def get(self, key):\n"
    "        return self.data.get(key)  # may be None\n```\n"
    "Prices rose 3.5% to $1,234.56 on 2024-03-15; π ≈ 3.14159, e ≈ 2.71828. "
    "Emoji: 🎉👍🏽🌍 👨‍👩‍👧 — café, naïve, Zürich, Ελληνικά, русский язык, 日本語, 한국어.\n"
    "Q: What is the capital of France?\nA: Paris is the capital of France."
)

# Tokenizer corpus: each entry is checked on its own, and all of them joined.
TOKENIZER_CORPUS: dict[str, str] = {
    "english": "Hello, world! How are you doing today? I'm fine, they've said it's OK — DON'T SHOUT.",
    "chinese": "你好，世界！今天天气很好。我们去公园散步吧。人工智能（AI）正在改变世界。",
    "code": 'def main(argv: list[str]) -> int:\n    for i, x in enumerate(argv):\n        print(f"{i}: {x!r}")\n    return 0\n',
    "code_tabs": "if (x) {\n\treturn y;\n\t\t// nested\n}\n",
    "numbers": "1234567 3.14159 -42 1e-10 0x1F 2024-01-01 1,000,000 99.99% 007",
    "spaces": "a  b   c    d     e        f",
    "tabs": "\tone\t\ttwo\t \tthree \t",
    "newlines": "line1\nline2\n\n\nline5\n\n\n\n\nend\r\nwindows\r\n",
    "leading_trailing": "   leading and trailing   ",
    "only_whitespace": " \n\t  \n\n\n",
    "emoji": "👋🌍🚀🎉 ok👍🏽 👨‍👩‍👧‍👦 family 🏳️‍🌈 flag 🧑🏾‍💻 coder ❤️‍🔥",
    "accented": "café naïve résumé Zürich Ångström façade São Paulo Ελληνικά русский",
    "other_scripts": "العربية עברית हिन्दी 日本語のテキスト 한국어 ภาษาไทย",
    "symbols": "<html><body class=\"x\">&amp;</body></html> ==== !!!! ???? ---- ~~~~ @#$%^&*()",
    "invisible": "a\u00a0b\u200bc\ufeffd\u2028e\x00f\x01g\x7f",
    "fullwidth_math": "ｆｕｌｌｗｉｄｔｈ　ｓｐａｃｅ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√∞ ½ ²",
    "chat_specials": "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "specials_glued": "x<|im_start|>assistant\nSure!<|im_end|><|endoftext|>y",
}

# Quantized types vs the F32 GGUF: (minimum top-1 agreement, maximum mean KL(p_F32 || p_quant)).
# Random weights quantize poorly (no outlier structure, tiny logit gaps), so the numbers are far
# from those of real models; these are regression guards, set from measurements on LONG_PROBE
# (tied / untied, llama-cpp-python 0.3.36, x86-64 CPU, 227 positions):
#   Q8_0   top-1 0.762 / 0.797   KL 0.096 / 0.079
#   Q6_K   top-1 0.515 / 0.568   KL 0.646 / 0.559
#   Q5_K_M top-1 0.410 / 0.339   KL 1.198 / 1.591
#   Q4_K_M top-1 0.220 / 0.150   KL 2.784 / 3.580
# KL bounds are ~2x the worse measurement, top-1 floors well below the worse one.
QUANT_BOUNDS: dict[str, tuple[float, float]] = {
    "Q8_0": (0.60, 0.19),
    "Q6_K": (0.38, 1.3),
    "Q5_K_M": (0.22, 3.2),
    "Q4_K_M": (0.08, 7.2),
}

# F16 vs transformers: ggml's CPU matmul with F16 weights converts the activations to F16 too
# (vec_dot_type of F16 is F16), so logits move although the weights are bit-exact (checked below):
# measured max |Δlogit| 0.160 tied / 0.167 untied on PROBE (0.155 on LONG_PROBE, where 1-2 of 227
# argmaxes flip at near-ties), with logits of magnitude ~24 and top-2 gaps down to ~0.01. The bound leaves margin for other CPUs' kernels; a
# conversion error (wrong tensor, transposition, bad rounding) moves logits by whole units.
# Argmax must still agree everywhere except (at most once) at a near-tie of the reference.
F16_MAX_ABS = 0.3
# F32 vs transformers: float32 kernel noise on both sides (measured 2.3e-4 tied / 5.6e-4 untied on
# PROBE; against transformers run in float64, llama.cpp is off by 1.8e-4 / 2.1e-4 and transformers
# float32 itself by 3.1e-4 / 3.9e-4).
F32_MAX_ABS = 1e-3


# --------------------------------------------------------------------------- references


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ckpts(qwen2_tied: Path, qwen2_untied: Path) -> dict[str, Path]:
    return {"tied": qwen2_tied, "untied": qwen2_untied}


@pytest.fixture(scope="module")
def hf_tokenizer(qwen2_tied: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen2_tied)


@pytest.fixture(scope="module")
def raw_tokenizer(qwen2_tied: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(qwen2_tied / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_model(ckpts):
    """hf_model(kind) -> transformers Qwen2ForCausalLM in float32, loaded once per module."""
    from transformers import Qwen2ForCausalLM

    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = Qwen2ForCausalLM.from_pretrained(ckpts[kind], dtype=torch.float32).eval()
        return cache[kind]

    yield get
    cache.clear()


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


# llama.cpp's names for the Hugging Face Qwen2 tensors (llama.cpp's LLM_TENSOR_NAMES for qwen2).
_HF_TO_GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                      "lm_head.weight": "output.weight"}
_HF_TO_GGUF_BLOCK = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name in _HF_TO_GGUF_GLOBAL:
        return _HF_TO_GGUF_GLOBAL[hf_name]
    _, _, bid, rest = hf_name.split(".", 3)
    module, param = rest.rsplit(".", 1)
    return f"blk.{bid}.{_HF_TO_GGUF_BLOCK[module]}.{param}"


def _source_tensors(ckpt: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor as stored) for every tensor of the checkpoint, via safetensors itself."""
    from safetensors import safe_open

    index = ckpt / "model.safetensors.index.json"
    files = sorted(set(_read_json(index)["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    for name in files:
        with safe_open(str(ckpt / name), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


# --------------------------------------------------------------------------- llama.cpp side


def _llama(path: Path, *, vocab_only: bool = False):
    return llama_cpp.Llama(
        str(path),
        n_ctx=N_CTX,
        n_batch=N_CTX,
        n_ubatch=N_CTX,
        logits_all=True,
        n_threads=2,
        n_threads_batch=2,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        vocab_only=vocab_only,
    )


@contextlib.contextmanager
def _opened(path: Path, **kw) -> Iterator[object]:
    llm = _llama(path, **kw)
    try:
        yield llm
    finally:
        llm.close()


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    assert len(ids) <= N_CTX
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


@pytest.fixture(scope="module")
def f32_llama(converted):
    """f32_llama(kind) -> llama_cpp.Llama on the F32 GGUF (kept for the module)."""
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = _llama(converted(kind, "F32"))
        return cache[kind]

    yield get
    for llm in cache.values():
        llm.close()


@pytest.fixture(scope="module")
def readers(converted):
    """readers(kind, quant) -> gguf.GGUFReader, parsed once (it is slow on a 150k vocabulary)."""
    cache: dict[tuple[str, str], gguf.GGUFReader] = {}

    def get(kind: str, quant: str) -> gguf.GGUFReader:
        if (kind, quant) not in cache:
            cache[(kind, quant)] = gguf.GGUFReader(converted(kind, quant))
        return cache[(kind, quant)]

    return get


def _tensor_table(path: Path) -> tuple[dict[str, object], dict[str, tuple[tuple[int, ...], int]]]:
    """Scalar metadata and {tensor name: (GGUF dims, ggml type)} straight from the GGUF header.

    Array values are skipped, not decoded, so this takes a fraction of a second.
    """
    kv, tensors, _, _ = _read_header(path)
    return kv, tensors


def _read_header(path: Path) -> tuple[dict[str, object], dict[str, tuple[tuple[int, ...], int]], dict[str, int], int]:
    """``_tensor_table`` plus each tensor's data offset and where the data section starts (the GGUF
    spec: after the tensor table, padded to ``general.alignment``, 32 by default)."""
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    with open(path, "rb") as fh:
        data = fh.read(64 * 1024 * 1024)  # header, metadata and tensor table are well inside this
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        s = data[pos : pos + n].decode("utf-8")
        pos += n
        return s

    def value(vtype: int):
        nonlocal pos
        if vtype in scalar:
            return take(scalar[vtype])
        if vtype == 8:
            return string()
        assert vtype == 9, vtype
        itype, n = take("<I"), take("<Q")
        if itype == 8:
            for _ in range(n):
                length = take("<Q")  # (not `pos += take(...)`: that would add to the stale pos)
                pos += length
        else:
            pos += n * struct.calcsize(scalar[itype])
        return None  # arrays are not decoded

    assert data[:4] == b"GGUF"
    pos = 4
    assert take("<I") == 3
    n_tensors, n_kv = take("<Q"), take("<Q")
    kv = {}
    for _ in range(n_kv):
        key = string()
        kv[key] = value(take("<I"))
    tensors, offsets = {}, {}
    for _ in range(n_tensors):
        name = string()
        dims = tuple(take("<Q") for _ in range(take("<I")))
        tensors[name] = (dims, take("<I"))
        offsets[name] = take("<Q")
    align = int(kv.get("general.alignment") or 32)  # type: ignore[call-overload]
    return kv, tensors, offsets, -(-pos // align) * align


def _kl_top1(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean KL(softmax(ref) || softmax(other)) per position over the full vocabulary, and top-1 agreement."""
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = other - other.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return float(kl.mean()), float((ref.argmax(-1) == other.argmax(-1)).mean())


# --------------------------------------------------------------------------- 1. F32 logits


@pytest.mark.parametrize("kind", KINDS)
def test_f32_logits_equal_transformers(kind, hf_model, hf_tokenizer, f32_llama) -> None:
    ids = hf_tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    assert len(ids) > 40
    ref = _hf_logits(hf_model(kind), ids)
    got = _llama_logits(f32_llama(kind), ids)
    assert got.shape == ref.shape == (len(ids), 151936)
    diff = np.abs(got - ref).max()
    print(f"\n[{kind}] F32 vs transformers over {len(ids)} tokens: max |Δlogit| = {diff:.3g}")
    assert diff <= F32_MAX_ABS
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))


# --------------------------------------------------------------------------- 2. tokenization


@pytest.fixture(scope="module")
def vocab_llama(converted):
    with _opened(converted("tied", "F32"), vocab_only=True) as llm:
        yield llm


@pytest.mark.parametrize("name", list(TOKENIZER_CORPUS) + ["all_joined"])
def test_tokenization_equals_hf(name, vocab_llama, hf_tokenizer, raw_tokenizer) -> None:
    text = "\n".join(TOKENIZER_CORPUS.values()) if name == "all_joined" else TOKENIZER_CORPUS[name]
    want = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert want == raw_tokenizer.encode(text, add_special_tokens=False).ids  # the two HF paths agree
    got = vocab_llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert got == want, [(hf_tokenizer.convert_ids_to_tokens(i)) for i in (got, want)]
    # Round trip: llama.cpp's detokenizer gives back the exact bytes, as does HF's decode.
    assert vocab_llama.detokenize(got, special=True) == text.encode("utf-8")
    assert hf_tokenizer.decode(want, skip_special_tokens=False) == text


def test_chat_specials_are_single_control_tokens(vocab_llama, hf_tokenizer) -> None:
    text = TOKENIZER_CORPUS["chat_specials"]
    ids = vocab_llama.tokenize(text.encode(), add_bos=False, special=True)
    specials = [hf_tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")]
    assert [i for i in ids if i in specials] == specials
    # Without special=True the markers are plain text, split into ordinary tokens.
    plain = vocab_llama.tokenize(text.encode(), add_bos=False, special=False)
    assert not set(plain) & set(specials)
    assert plain == hf_tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_non_nfc_text_needs_nfc_first(vocab_llama, hf_tokenizer) -> None:
    """tokenizer.json has an NFC normalizer; llama.cpp's BPE tokenizer does not normalise.

    Decomposed text ("e" + combining acute) therefore tokenizes differently in llama.cpp unless the
    caller applies NFC first; with NFC applied the ids match HF exactly.
    """
    import unicodedata

    assert (hf_tokenizer.backend_tokenizer.normalizer.normalize_str("e\u0301")) == "\u00e9"  # NFC in tokenizer.json
    text = "cafe\u0301 nai\u0308ve A\u030angstro\u0308m"
    want = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    nfc = unicodedata.normalize("NFC", text).encode()
    assert vocab_llama.tokenize(nfc, add_bos=False, special=True) == want


def test_quantized_file_tokenizes_the_same(converted, hf_tokenizer) -> None:
    text = "\n".join(TOKENIZER_CORPUS.values())
    with _opened(converted("untied", "Q4_K_M"), vocab_only=True) as llm:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- 3. F16


@pytest.mark.parametrize("kind", KINDS)
def test_f16_logits_close_to_transformers(kind, converted, hf_model, hf_tokenizer) -> None:
    ids = hf_tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    ref = _hf_logits(hf_model(kind), ids)
    with _opened(converted(kind, "F16")) as llm:
        got = _llama_logits(llm, ids)
    diff = np.abs(got - ref).max()
    top = np.sort(ref, -1)
    gap = top[:, -1] - top[:, -2]
    mismatch = np.flatnonzero(got.argmax(-1) != ref.argmax(-1))
    print(
        f"\n[{kind}] F16 vs transformers over {len(ids)} tokens: max |Δlogit| = {diff:.3g}, "
        f"argmax mismatches {len(mismatch)} (reference top-2 gaps there: {gap[mismatch].round(3).tolist()})"
    )
    assert diff <= F16_MAX_ABS
    # Argmax agrees everywhere but (at most one) near-tie of the reference.
    assert len(mismatch) <= 1
    assert (gap[mismatch] < 2 * F16_MAX_ABS).all()


@pytest.mark.parametrize(("kind", "quant"), [("untied", "F16"), ("tied", "F32")])
def test_weights_are_the_source_values(kind, quant, ckpts, readers) -> None:
    """Every tensor: F16 file == bf16 source rounded to float16; F32 file == bf16 source exactly."""
    reader = readers(kind, quant)
    by_name = {t.name: t for t in reader.tensors}
    seen = set()
    for hf_name, src in _source_tensors(ckpts[kind]):
        assert src.dtype == torch.bfloat16
        name = _gguf_name(hf_name)
        t = by_name[name]
        seen.add(name)
        exact = src.float().numpy()
        half = quant == "F16" and src.ndim > 1
        assert t.tensor_type == (GGML.F16 if half else GGML.F32), name
        # f16 has fewer exponent bits than bf16: tiny values land in f16 subnormals and round there.
        want = src.to(torch.float16).float().numpy() if half else exact
        got = np.asarray(t.data).astype(np.float32).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=name)
        if half:
            # bf16 -> f16 is lossless for every value in f16's normal range.
            normal = np.abs(exact) >= 2.0**-14
            assert normal.mean() > 0.99
            np.testing.assert_array_equal(got[normal], exact[normal], err_msg=name)
    assert seen == set(by_name)


# --------------------------------------------------------------------------- 4. quantized types


@pytest.fixture(scope="module")
def f32_long_logits(f32_llama, hf_tokenizer):
    cache: dict[str, tuple[list[int], np.ndarray]] = {}

    def get(kind: str):
        if kind not in cache:
            ids = hf_tokenizer(LONG_PROBE, add_special_tokens=False)["input_ids"]
            cache[kind] = (ids, _llama_logits(f32_llama(kind), ids))
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_types_track_f32(kind, converted, f32_long_logits) -> None:
    ids, ref = f32_long_logits(kind)
    assert len(ids) >= 150
    stats: dict[str, tuple[float, float]] = {}
    for quant in QUANT_BOUNDS:
        with _opened(converted(kind, quant)) as llm:
            stats[quant] = _kl_top1(ref, _llama_logits(llm, ids))
    print(f"\n[{kind}] vs F32 GGUF over {len(ids)} tokens:")
    for quant, (kl, top1) in stats.items():
        print(f"  {quant:7s} top-1 {top1:.3f} (floor {QUANT_BOUNDS[quant][0]})  KL {kl:.4f} (bound {QUANT_BOUNDS[quant][1]})")
    for quant, (kl, top1) in stats.items():
        min_top1, max_kl = QUANT_BOUNDS[quant]
        assert top1 >= min_top1, f"{quant} top-1 {top1:.3f} < {min_top1}"
        assert kl <= max_kl, f"{quant} KL {kl:.4f} > {max_kl}"
    # More bits, closer to F32: Q8_0 best, Q4_K_M worst.
    kls = [stats[q][0] for q in QUANT_BOUNDS]
    assert kls == sorted(kls), stats
    assert stats["Q8_0"][1] == max(t for _, t in stats.values())


# --------------------------------------------------------------------------- 5. greedy generation


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_equals_transformers(kind, hf_model, hf_tokenizer, f32_llama) -> None:
    n_new = 32
    messages = [{"role": "user", "content": "Write a haiku about the sea. 用中文也写一首。"}]
    prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = hf_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model = hf_model(kind)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n_new,
            repetition_penalty=1.0,
            pad_token_id=hf_tokenizer.pad_token_id,
        )
    want = out[0, len(ids) :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])

    llm = f32_llama(kind)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    llm.reset()
    got: list[int] = []
    # temp=0 -> llama.cpp's greedy sampler; repeat_penalty=1.0 and no frequency/presence penalty.
    gen = llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                       frequency_penalty=0.0, presence_penalty=0.0, reset=True)
    for token in gen:
        # Each pick is the argmax of the logits llama.cpp computed at that position.
        assert token == int(np.argmax(llm.scores[len(ids) + len(got) - 1]))
        got.append(token)
        if len(got) == n_new:
            break
    gen.close()  # generate() never stops at EOS by itself: we compare all 32 unless transformers stopped
    print(f"\n[{kind}] greedy: transformers {want}\n[{kind}] greedy: llama.cpp    {got}")
    if len(want) < n_new:
        assert want[-1] in eos, "transformers stopped early without EOS"
    assert got[: len(want)] == want
    assert len(want) == n_new  # the random model does not hit EOS within 32 tokens: full-length check


# --------------------------------------------------------------------------- 6. metadata


def _expected_special_ids(ckpt: Path) -> dict[str, int]:
    """bos/eos/padding ids as the checkpoint states them: tokenizer_config.json's token, else config.json's id."""
    config = _read_json(ckpt / "config.json")
    tcfg = _read_json(ckpt / "tokenizer_config.json")
    tok = _read_json(ckpt / "tokenizer.json")
    ids = dict(tok["model"]["vocab"]) | {a["content"]: a["id"] for a in tok["added_tokens"]}
    out = {}
    for name, gguf_name in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        token = tcfg.get(f"{name}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            out[gguf_name] = ids[token]
        elif isinstance(config.get(f"{name}_token_id"), int):
            out[gguf_name] = config[f"{name}_token_id"]
    return out


def _expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> GGUF dims (HF shape reversed), from config.json alone."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    hd = config.get("head_dim") or h // heads
    q, kv = heads * hd, config["num_key_value_heads"] * hd
    hf = {"token_embd.weight": (v, h), "output_norm.weight": (h,)}
    if not config.get("tie_word_embeddings", False):
        hf["output.weight"] = (v, h)
    for b in range(config["num_hidden_layers"]):
        hf |= {
            f"blk.{b}.attn_norm.weight": (h,),
            f"blk.{b}.attn_q.weight": (q, h),
            f"blk.{b}.attn_q.bias": (q,),
            f"blk.{b}.attn_k.weight": (kv, h),
            f"blk.{b}.attn_k.bias": (kv,),
            f"blk.{b}.attn_v.weight": (kv, h),
            f"blk.{b}.attn_v.bias": (kv,),
            f"blk.{b}.attn_output.weight": (h, q),
            f"blk.{b}.ffn_norm.weight": (h,),
            f"blk.{b}.ffn_gate.weight": (f, h),
            f"blk.{b}.ffn_up.weight": (f, h),
            f"blk.{b}.ffn_down.weight": (h, f),
        }
    return {name: tuple(reversed(shape)) for name, shape in hf.items()}


FILE_TYPES = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
    "Q5_K_M": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "Q4_K_M": gguf.LlamaFileType.MOSTLY_Q4_K_M,
}


# tied is read from its F32 file, untied from its F16 file: one GGUFReader parse per checkpoint.
@pytest.mark.parametrize(("kind", "quant"), [("tied", "F32"), ("untied", "F16")])
def test_metadata_matches_checkpoint(kind, quant, ckpts, readers) -> None:
    import localaug

    ckpt = ckpts[kind]
    config = _read_json(ckpt / "config.json")
    tcfg = _read_json(ckpt / "tokenizer_config.json")
    tok = _read_json(ckpt / "tokenizer.json")
    r = readers(kind, quant)

    def val(key: str):
        field = r.get_field(key)
        assert field is not None, f"missing {key}"
        return field.contents()

    rope_theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")
    assert val("general.architecture") == "qwen2"
    assert val("qwen2.block_count") == config["num_hidden_layers"]
    assert val("qwen2.context_length") == config["max_position_embeddings"]
    assert val("qwen2.embedding_length") == config["hidden_size"]
    assert val("qwen2.feed_forward_length") == config["intermediate_size"]
    assert val("qwen2.attention.head_count") == config["num_attention_heads"]
    assert val("qwen2.attention.head_count_kv") == config["num_key_value_heads"]
    assert val("qwen2.rope.freq_base") == pytest.approx(rope_theta, rel=1e-7)
    assert val("qwen2.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"], rel=1e-6)
    assert val("general.file_type") == FILE_TYPES[quant]
    assert val("general.quantization_version") == gguf.GGML_QUANT_VERSION
    assert val("localaug.version") == localaug.__version__

    # Vocabulary: every id of tokenizer.json in place, padded to config.vocab_size with UNUSED [PAD{i}].
    assert val("tokenizer.ggml.model") == "gpt2"
    assert val("tokenizer.ggml.pre") == "qwen2"
    tokens, types = val("tokenizer.ggml.tokens"), val("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == config["vocab_size"] == 151936
    vocab = tok["model"]["vocab"]
    added = {a["id"]: a for a in tok["added_tokens"]}
    n_tok = max([*vocab.values(), *added]) + 1
    assert n_tok < config["vocab_size"]
    for t, i in vocab.items():
        assert tokens[i] == t and types[i] == gguf.TokenType.NORMAL, (i, t)
    for i, a in added.items():
        assert tokens[i] == a["content"] and types[i] == gguf.TokenType.CONTROL, (i, a)
    assert tokens[n_tok:] == [f"[PAD{i}]" for i in range(n_tok, config["vocab_size"])]
    assert set(types[n_tok:]) == {gguf.TokenType.UNUSED}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    assert val("tokenizer.ggml.merges") == merges

    expected_ids = _expected_special_ids(ckpt)
    assert set(expected_ids) == {"bos", "eos", "padding"}
    for name, want in expected_ids.items():
        assert val(f"tokenizer.ggml.{name}_token_id") == want, name
    assert val("tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    assert tcfg.get("add_bos_token", False) is False
    assert val("tokenizer.ggml.add_bos_token") is False
    assert val("tokenizer.chat_template") == tcfg["chat_template"]

    # Tensors: exactly the expected set, with config-derived shapes (GGUF dims are reversed).
    got = {t.name: tuple(int(d) for d in t.shape) for t in r.tensors}
    assert got == _expected_tensors(config)
    assert ("output.weight" in got) is (kind == "untied")


@pytest.mark.parametrize("kind", KINDS)
def test_tensor_types_in_every_output_type(kind, ckpts, converted) -> None:
    """Norms and biases stay F32 in every type; 2-D weights take the type asked for."""
    config = _read_json(ckpts[kind] / "config.json")
    expected = _expected_tensors(config)
    full_types = {"F32": GGML.F32, "F16": GGML.F16, "Q8_0": GGML.Q8_0}
    kquants = {GGML.Q2_K, GGML.Q3_K, GGML.Q4_K, GGML.Q5_K, GGML.Q6_K, GGML.Q8_0}
    for quant, file_type in FILE_TYPES.items():
        kv, tensors = _tensor_table(converted(kind, quant))
        assert kv["general.architecture"] == "qwen2"
        assert kv["general.file_type"] == file_type, quant
        assert {n: d for n, (d, _) in tensors.items()} == expected, quant
        for b in range(config["num_hidden_layers"]):
            assert {f"blk.{b}.attn_{x}.bias" for x in "qkv"} <= set(tensors)
        for name, (dims, ttype) in tensors.items():
            if len(dims) == 1 or name.endswith("_norm.weight"):
                assert ttype == GGML.F32, (quant, name, GGML(ttype).name)
            elif quant in full_types:
                assert ttype == full_types[quant], (quant, name, GGML(ttype).name)
            else:
                assert ttype in kquants, (quant, name, GGML(ttype).name)
        if quant not in full_types:
            # The mix follows the type: the bulk of the weights carry the named K-quant.
            main = {"Q6_K": GGML.Q6_K, "Q5_K_M": GGML.Q5_K, "Q4_K_M": GGML.Q4_K}[quant]
            assert tensors["blk.0.ffn_up.weight"][1] == main, quant


# --------------------------------------------------------------------------- 7. BF16 and the other quantizer types


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_same_type_is_written_with_the_source_bytes(dtype: str, qwen2_tied: Path, tmp_path: Path) -> None:
    """`localaug convert --quant BF16` of a bf16 checkpoint, `--quant F16` of an fp16 one: written
    straight from the safetensors (no quantizer run, no float32 round trip); every 2-D weight holds
    the checkpoint's own bytes, norms and biases are F32 of the same values."""
    from transformers import Qwen2ForCausalLM
    from typer.testing import CliRunner

    from localaug.cli.main import app

    torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16}[dtype]
    src_dir = qwen2_tied
    if dtype == "F16":  # the same model saved in fp16 by transformers, beside its tokenizer files
        src_dir = tmp_path / "fp16"
        shutil.copytree(qwen2_tied, src_dir, ignore=shutil.ignore_patterns("*.safetensors*"))
        Qwen2ForCausalLM.from_pretrained(qwen2_tied, torch_dtype=torch.float16).save_pretrained(src_dir, safe_serialization=True)
    out = tmp_path / f"m.{dtype}.gguf"
    result = CliRunner().invoke(app, ["convert", str(src_dir), "--quant", dtype, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"writing {dtype}" in result.stderr and "quantizing" not in result.stderr, result.stderr
    kv, tensors, offsets, start = _read_header(out)
    assert kv["general.file_type"] == getattr(gguf.LlamaFileType, f"MOSTLY_{dtype}")
    blob = out.read_bytes()
    seen = set()
    for hf_name, src in _source_tensors(src_dir):
        assert src.dtype == torch_dtype
        name = _gguf_name(hf_name)
        dims, ttype = tensors[name]
        seen.add(name)
        assert dims == tuple(reversed(src.shape)), name
        if src.ndim == 1:
            want, want_type = src.float().numpy().tobytes(), GGML.F32
        else:
            want, want_type = src.contiguous().view(torch.int16).numpy().tobytes(), getattr(GGML, dtype)
        assert ttype == want_type, (name, GGML(ttype).name)
        at = start + offsets[name]
        assert blob[at : at + len(want)] == want, name
    assert seen == set(tensors)


# The types llama.cpp's quantizer makes from the BF16 copy: the file type, and the block type that the
# bulk of the weights (ffn_up) carries. llama.cpp gives some tensors more bits (the tied embedding,
# which is also the output, gets Q6_K; attn_v / ffn_down may be raised), never fewer.
MORE_QUANTS = {
    "Q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, GGML.Q4_0),
    "Q3_K_M": (gguf.LlamaFileType.MOSTLY_Q3_K_M, GGML.Q3_K),
    "Q2_K": (gguf.LlamaFileType.MOSTLY_Q2_K, GGML.Q2_K),
}
BLOCK_TYPES = {GGML.Q4_0, GGML.Q4_1, GGML.Q5_0, GGML.Q5_1, GGML.Q8_0,
               GGML.Q2_K, GGML.Q3_K, GGML.Q4_K, GGML.Q5_K, GGML.Q6_K}


@pytest.mark.parametrize("quant", list(MORE_QUANTS))
def test_more_quant_types_through_llama_cpp(quant: str, ckpts, converted, hf_tokenizer) -> None:
    file_type, main = MORE_QUANTS[quant]
    config = _read_json(ckpts["tied"] / "config.json")
    path = converted("tied", quant)
    kv, tensors = _tensor_table(path)
    assert kv["general.file_type"] == file_type
    assert {n: d for n, (d, _) in tensors.items()} == _expected_tensors(config)
    for name, (dims, ttype) in tensors.items():
        if len(dims) == 1:
            assert ttype == GGML.F32, (name, GGML(ttype).name)
        else:
            assert ttype in BLOCK_TYPES, (name, GGML(ttype).name)
    for b in range(config["num_hidden_layers"]):
        assert tensors[f"blk.{b}.ffn_up.weight"][1] == main, (b, GGML(tensors[f"blk.{b}.ffn_up.weight"][1]).name)
    # llama.cpp loads the file and computes finite logits with it.
    ids = hf_tokenizer(PROBE, add_special_tokens=False)["input_ids"][:32]
    with _opened(path) as llm:
        logits = _llama_logits(llm, ids)
    assert logits.shape == (len(ids), 151936) and np.isfinite(logits).all()
