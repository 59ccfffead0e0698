"""Tokenizer files -> GGUF vocabulary keys, as llama.cpp's converter writes them for Qwen2.

Tokens and token types come from tokenizer.json (padded to config.vocab_size with ``[PAD{i}]``
UNUSED entries, as the real checkpoints need); merges, special-token ids, add_bos/add_eos and the
chat template come from gguf-py's ``SpecialVocab``, the very code llama.cpp's converter uses.
No transformers, no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from localaug.convert.checkpoint import Checkpoint
from localaug.core.errors import CheckpointError, UnsupportedModelError

# Pre-tokenizer split regex in tokenizer.json -> llama.cpp's pre-tokenizer name.
PRE_TOKENIZERS: dict[str, str] = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


@dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    pre: str
    special: gguf.SpecialVocab

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        self.special.add_to_gguf(writer, quiet=True)


def _looks_special(token: str) -> bool:
    # Added tokens spelled like control tokens are control tokens even when not flagged special.
    return (token.startswith("<|") and token.endswith("|>")) or (token.startswith("<｜") and token.endswith("｜>"))


def _pre_tokenizer(tok: dict) -> str:
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Split":
            regex = (step.get("pattern") or {}).get("Regex")
            if regex in PRE_TOKENIZERS:
                return PRE_TOKENIZERS[regex]
            raise UnsupportedModelError(
                "tokenizer.json has a pre-tokenizer localaug does not know; supported: "
                + ", ".join(sorted(set(PRE_TOKENIZERS.values())))
                + " (the Qwen2 byte-level BPE)"
            )
    raise UnsupportedModelError("tokenizer.json has no Split pre-tokenizer: it is not a Qwen2 byte-level BPE tokenizer")


def load_vocab(ckpt: Checkpoint) -> Vocab:
    path = ckpt.path / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt.path} has no tokenizer.json: download the model's tokenizer files")
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        model = tok["model"]
        vocab: dict[str, int] = model["vocab"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid tokenizer.json: re-download it") from e
    if model.get("type") != "BPE":
        raise UnsupportedModelError(f"tokenizer.json is a {model.get('type')} model; localaug converts byte-level BPE (Qwen2)")
    pre = _pre_tokenizer(tok)

    reverse = {i: t for t, i in vocab.items()}
    added = {int(a["id"]): a for a in tok.get("added_tokens", [])}
    for i, a in added.items():
        reverse[i] = a["content"]
    n_vocab = int(ckpt.config.get("vocab_size") or (max(reverse) + 1))
    if max(reverse) >= n_vocab:
        raise CheckpointError(f"tokenizer has token id {max(reverse)} but config.json vocab_size is {n_vocab}")

    roundtrip = _added_token_roundtrip(path, [a for a in added.values() if not a.get("normalized", False)])
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            # llama.cpp expects control/user-defined tokens pre-normalised.
            token = roundtrip.get(token, token)
            if added[i].get("special") or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    special = gguf.SpecialVocab(ckpt.path, load_merges=True)
    _byte_level_adds_nothing(tok, special)
    return Vocab(tokens, types, pre, special)


def _byte_level_adds_nothing(tok: dict, special: gguf.SpecialVocab) -> None:
    """A post-processor made only of ByteLevel steps adds no BOS/EOS: say so explicitly.

    Newer gguf-py (the one vendored with llama.cpp's converter) writes ``add_bos_token`` and
    ``add_eos_token`` = false for such tokenizers, preferring the post-processor over
    tokenizer_config.json; older gguf-py releases on PyPI only write what tokenizer_config says.
    """
    post = tok.get("post_processor") or {}
    steps = post.get("processors", [post]) if isinstance(post, dict) else []
    if steps and all(isinstance(s, dict) and s.get("type") == "ByteLevel" for s in steps):
        special.add_special_token["bos"] = False
        special.add_special_token["eos"] = False


def _added_token_roundtrip(path: Path, entries: list[dict]) -> dict[str, str]:
    """encode+decode each non-normalised added token, as the reference converter does."""
    if not entries:
        return {}
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(path))
    out = {}
    for a in entries:
        ids = tk.encode(a["content"], add_special_tokens=False).ids
        out[a["content"]] = tk.decode(ids, skip_special_tokens=False)
    return out
