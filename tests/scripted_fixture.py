"""Scripted Qwen2 checkpoints: real Qwen2 architecture and tokenizer, weights set by hand so that the
model writes known texts.

Every layer's attention and MLP weights are zero, so the residual stream is the embedding of the
current token alone: the model is a bigram table, ``next token = successor(current token)``. Each
token that has a successor gets its own embedding dimension (a one-hot row); the LM head scores its
successors along that dimension. After the prompt's last token (the ``\\n`` of
``<|im_start|>assistant\\n``) the successors are the first tokens of every *branch*; each branch
then runs token by token to ``<|im_end|>``. Greedy decoding writes one branch; sampling picks a
branch at random (all branches score the same) and then follows it.

So that the model can only ever write one of the branches, each token id stands for one prefix of
the texts (the branches form a trie of distinct token ids; shared prefixes branch where they part;
only a branch's last token may end several): a word needed at two places is written there with
other (smaller) vocabulary tokens. The texts are
still exactly the given strings once decoded, which is what the tests compare against: an
expectation that does not come from the code under test.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from qwen2_fixture import write_tokenizer

IM_END = 151645
NEWLINE = 198  # the last prompt token of a ChatML generation prompt: "<|im_start|>assistant\n"

# What each scripted model writes. "refine" has one text (greedy and sampled alike); it holds a
# newline inside merged tokens ("],\n\n") for the stop-string tests. "expand" writes one of eight
# distinct instructions per sample; "pairs" one of three Response-Exp pairs; "refusal" refuses;
# "respond" answers every instruction with one text; "judge" always prefers the answer shown first.
SCRIPTS: dict[str, list[str]] = {
    "refine": [
        'Write a detailed Hangzhou travel guide: ["sights", "food"],\n\nthen add hotels by budget and transport tips.',
    ],
    "expand": [
        "Describe California coastal road trips.",
        "Plan Kyoto weekends for food lovers.",
        "Compose winter haiku poems.",
        "List five Python learning tips.",
        "Explain how vaccines train immunity.",
        "Thank your favorite teacher with a letter.",
        "Summarize Hamlet in three sentences.",
        "Suggest monthly budgets to students moving abroad.",
    ],
    "refusal": ["I'm sorry, but I can't help with that request."],
    "respond": ["Walk along West Lake early and visit Lingyin Temple before trying Longjing tea."],
    "judge": ["Assistant A is clearer and more complete. [[A]]"],
    # several answers to one instruction (sampled: one per sample), and judges of them: "grader"
    # always rates 7; "grades" rates 3 or 8 (sampled); "verdicts" names A, B or a tie (sampled)
    "answers": [
        "Visit West Lake at dawn.",
        "Take a boat across the lake, then walk to Lingyin Temple for the afternoon.",
        "Hangzhou is nice.",
    ],
    "grader": ["The answer is relevant and clear, with some useful detail. Rating: [[7]]"],
    "grades": ["Weighed against the question. Rating: [[3]]", "Weighed against the question. Rating: [[8]]"],
    "verdicts": ["Compared both answers. [[A]]", "Compared both answers. [[B]]", "Compared both answers. [[C]]"],
    "pairs": [
        "### Instruction:\nName three primary colors.\n\n### Response \nRed, yellow and blue",
        "### Instruction:\nWhat is the capital of France?\n\n ### Response:\n\nParis",
        "### Instruction:\nGive a synonym for happy.\n\n###\nResponse  \nJoyful",
    ],
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE token strings use it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def _vocab_bytes(tokenizer_json: str) -> dict[bytes, int]:
    table = {c: b for b, c in _bytes_to_unicode().items()}
    vocab = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))["model"]["vocab"]
    return {bytes(table[c] for c in tok): i for tok, i in vocab.items() if all(c in table for c in tok)}


def segment(branches: list[str], vocab: dict[bytes, int], start: int = NEWLINE) -> dict[int, list[int]]:
    """Token ids for every branch such that from any token the model can only continue into a
    branch that token belongs to: each token id stands for one prefix of the texts (the branches
    form a trie of distinct token ids, shared prefixes branching where they part), except a last
    token, which may end several branches (it leads to ``IM_END`` only). Returns token ->
    successors."""
    succ: dict[int, list[int]] = {start: []}
    role: dict[int, bytes | None] = {start: b""}  # the prefix a token stands for; None: a last token
    longest = max(len(b) for b in vocab)
    budget = [200_000]  # search steps: a branch that cannot be placed fails fast

    def place(data: bytes, done: bytes, prev: int) -> bool:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        if not data:
            if IM_END not in succ[prev]:
                succ[prev].append(IM_END)
            return True
        for size in range(min(len(data), longest), 0, -1):
            tok = vocab.get(data[:size])
            if tok is None:
                continue
            here = None if size == len(data) else done + data[:size]
            if role.get(tok, here) != here:
                continue  # this token id already stands for something else
            new_tok, new_link = tok not in role, tok not in succ[prev]
            role[tok] = here
            succ.setdefault(tok, [])
            if new_link:
                succ[prev].append(tok)
            if place(data[size:], done + data[:size], tok):
                return True
            if new_link:
                succ[prev].remove(tok)
            if new_tok:
                del role[tok], succ[tok]
        return False

    for text in branches:
        if not text or not place(text.encode("utf-8"), b"", start):
            raise ValueError(f"cannot segment {text!r} into tokens that each stand for one prefix: reword the branch")
    return succ


def build_scripted_checkpoint(dst: Path, branches: list[str], *, hidden: int = 256) -> Path:
    """A bf16 Qwen2 checkpoint in ``dst`` that writes one of ``branches`` after a ChatML prompt."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    dst.mkdir(parents=True, exist_ok=True)
    write_tokenizer(dst)
    succ = segment(branches, _vocab_bytes(str(dst / "tokenizer.json")))
    if len(succ) > hidden:
        raise ValueError(f"{len(succ)} tokens with successors need hidden >= {len(succ)}")
    config = Qwen2Config(
        vocab_size=151936, hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=False, bos_token_id=151643, eos_token_id=IM_END, torch_dtype="bfloat16",
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else torch.zeros_like(p))
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        for dim, (tok, nexts) in enumerate(sorted(succ.items())):
            embed[tok, dim] = 1.0
            for nxt in nexts:
                head[nxt, dim] = 1.0
    model.to(torch.bfloat16).save_pretrained(dst, safe_serialization=True)
    GenerationConfig(bos_token_id=151643, eos_token_id=[151643, IM_END]).save_pretrained(dst)
    (dst / "branches.json").write_text(json.dumps(branches, ensure_ascii=False), encoding="utf-8")
    return dst
