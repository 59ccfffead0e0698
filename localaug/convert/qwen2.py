"""The Qwen2 mapping: hyperparameters and tensor names, as tables (after gguf-py's tensor_mapping).

Everything llama.cpp's ``qwen2`` architecture reads is here: the hparam keys it loads and the
tensor names and shapes it expects. ``plan()`` checks a checkpoint against them before any byte
is written, so a mismatched checkpoint fails early with a message naming the tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

from localaug.convert.checkpoint import Checkpoint, TensorRef
from localaug.core.errors import CheckpointError, UnsupportedModelError

ARCH = "qwen2"

# Hugging Face architectures this module converts.
HF_ARCHITECTURES = ("Qwen2ForCausalLM",)


@dataclass(frozen=True)
class HParam:
    key: str  # GGUF key, "{arch}" is replaced
    config_keys: tuple[str, ...]  # first present wins
    kind: str  # "u32" | "f32"
    required: bool = True


# What the converter of llama.cpp writes for qwen2, in its order.
HPARAMS: tuple[HParam, ...] = (
    HParam("{arch}.block_count", ("num_hidden_layers",), "u32"),
    HParam("{arch}.context_length", ("max_position_embeddings",), "u32", required=False),
    HParam("{arch}.embedding_length", ("hidden_size",), "u32"),
    HParam("{arch}.feed_forward_length", ("intermediate_size",), "u32"),
    HParam("{arch}.attention.head_count", ("num_attention_heads",), "u32"),
    HParam("{arch}.attention.head_count_kv", ("num_key_value_heads",), "u32", required=False),
    HParam("{arch}.rope.freq_base", ("rope_theta",), "f32", required=False),
    HParam("{arch}.attention.layer_norm_rms_epsilon", ("rms_norm_eps",), "f32"),
)

# Global tensors: HF name -> GGUF name.
GLOBAL_TENSORS: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}

# Per-block tensors: HF suffix after "model.layers.{bid}." -> GGUF name after "blk.{bid}.".
BLOCK_TENSORS: dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}

# Tensors a checkpoint may carry that llama.cpp does not use.
IGNORED = re.compile(r"(\.rotary_emb\.inv_freq|\.attention\.masked_bias|\.attention\.bias)$")
_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Dims:
    vocab: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int


def dims(config: dict) -> Dims:
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return Dims(
            vocab=int(config["vocab_size"]),
            hidden=hidden,
            ffn=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            layers=int(config["num_hidden_layers"]),
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks {e.args[0]!r}: it is not a complete Qwen2 config") from e


def expected_shapes(d: Dims) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """HF (row-major) shapes of the global and per-block tensors."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    global_shapes = {
        "model.embed_tokens.weight": (d.vocab, d.hidden),
        "model.norm.weight": (d.hidden,),
        "lm_head.weight": (d.vocab, d.hidden),
    }
    block_shapes = {
        "input_layernorm.weight": (d.hidden,),
        "self_attn.q_proj.weight": (q, d.hidden),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, d.hidden),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, d.hidden),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (d.hidden, q),
        "post_attention_layernorm.weight": (d.hidden,),
        "mlp.gate_proj.weight": (d.ffn, d.hidden),
        "mlp.up_proj.weight": (d.ffn, d.hidden),
        "mlp.down_proj.weight": (d.hidden, d.ffn),
    }
    return global_shapes, block_shapes


def check_supported(ckpt: Checkpoint) -> None:
    if ckpt.architecture not in HF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{ckpt.path} is a {ckpt.architecture} checkpoint; localaug converts {', '.join(HF_ARCHITECTURES)} "
            "(the Qwen2 Refine/Exp family) — for other models use a ready-made GGUF"
        )


def hparams(config: dict) -> list[tuple[str, str, float | int]]:
    """(key, kind, value) for every hyperparameter the config provides."""
    rope = config.get("rope_parameters") or {}
    out: list[tuple[str, str, float | int]] = []
    for hp in HPARAMS:
        value = next((config[k] for k in hp.config_keys if config.get(k) is not None), None)
        if value is None and hp.key.endswith("rope.freq_base"):
            value = rope.get("rope_theta")  # newer configs nest it
        if value is None:
            if hp.required:
                raise CheckpointError(f"config.json lacks {hp.config_keys[0]!r}, needed for {hp.key.format(arch=ARCH)}")
            continue
        out.append((hp.key.format(arch=ARCH), hp.kind, float(value) if hp.kind == "f32" else int(value)))
    return out


# rope_scaling type in config.json -> GGUF rope scaling type; the converter of llama.cpp writes these.
ROPE_SCALING = {"linear": gguf.RopeScalingType.LINEAR, "yarn": gguf.RopeScalingType.YARN}


def rope_scaling(config: dict) -> list[tuple[str, str, object]]:
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = params.get("rope_type") or params.get("type")
    factor = params.get("factor")
    if kind not in ROPE_SCALING or factor is None:
        return []
    out: list[tuple[str, str, object]] = [
        (f"{ARCH}.rope.scaling.type", "str", ROPE_SCALING[kind].value),
        (f"{ARCH}.rope.scaling.factor", "f32", float(factor)),
    ]
    if kind == "yarn" and params.get("original_max_position_embeddings"):
        out.append((f"{ARCH}.rope.scaling.original_context_length", "u32", int(params["original_max_position_embeddings"])))
    return out


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: its name, its source, and its HF (row-major) shape."""

    name: str
    source: TensorRef

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    @property
    def is_vector_or_norm(self) -> bool:
        # llama.cpp keeps 1-D tensors and norms in F32 (its converter and quantizer agree).
        return len(self.shape) <= 1 or self.name.endswith("_norm.weight")


def plan(ckpt: Checkpoint) -> list[TensorPlan]:
    """Map and check every tensor; raise before writing anything if the checkpoint is off."""
    check_supported(ckpt)
    d = dims(ckpt.config)
    global_shapes, block_shapes = expected_shapes(d)
    tied = bool(ckpt.config.get("tie_word_embeddings", False))

    blocks: dict[int, list[TensorPlan]] = {}
    globals_: dict[str, TensorPlan] = {}
    for hf_name, ref in ckpt.tensors.items():
        if IGNORED.search(hf_name):
            continue
        m = _BLOCK.match(hf_name)
        if m and m.group(2) in BLOCK_TENSORS:
            bid, suffix = int(m.group(1)), m.group(2)
            if bid >= d.layers:
                raise CheckpointError(f"tensor {hf_name!r} is for layer {bid} but config.json has {d.layers} layers")
            want, gguf_name = block_shapes[suffix], f"blk.{bid}.{BLOCK_TENSORS[suffix]}"
            blocks.setdefault(bid, []).append(TensorPlan(gguf_name, ref))
        elif hf_name in GLOBAL_TENSORS:
            want, gguf_name = global_shapes[hf_name], GLOBAL_TENSORS[hf_name]
            globals_[hf_name] = TensorPlan(gguf_name, ref)
        else:
            raise CheckpointError(f"unexpected tensor {hf_name!r}: is this a plain Qwen2ForCausalLM checkpoint?")
        if ref.shape != want:
            raise CheckpointError(
                f"tensor {hf_name!r} has shape {list(ref.shape)} but config.json implies {list(want)}: "
                "the weights and config.json do not belong together"
            )

    missing = [n for n in ("model.embed_tokens.weight", "model.norm.weight") if n not in globals_]
    if "lm_head.weight" not in globals_ and not tied:
        missing.append("lm_head.weight")
    for bid in range(d.layers):
        have = {p.name for p in blocks.get(bid, [])}
        missing += [f"model.layers.{bid}.{s}" for s, g in BLOCK_TENSORS.items() if f"blk.{bid}.{g}" not in have]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"checkpoint lacks tensor(s) {', '.join(missing[:3])}{more}: download the complete weights")

    order = {g: i for i, g in enumerate(BLOCK_TENSORS.values())}
    out = [globals_["model.embed_tokens.weight"]]
    for bid in range(d.layers):
        out += sorted(blocks[bid], key=lambda p: order[p.name.split(".", 2)[2]])
    out.append(globals_["model.norm.weight"])
    if "lm_head.weight" in globals_:
        out.append(globals_["lm_head.weight"])
    return out


def parameter_count(tensors: list[TensorPlan]) -> int:
    return sum(p.source.n_elements for p in tensors)
