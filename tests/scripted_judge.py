"""A scripted judge: a real Qwen2 GGUF whose verdict on a pair depends on the question and the
answers it is shown.

The model is the bigram table of tests/scripted_fixture.py (every attention and MLP weight zero:
``next token = successor(current token)``), written with numpy (no torch) at a small hidden size.
Its chat template reduces the whole judging prompt to one character, and from that character's
token the model writes one fixed reply (``REPLIES``):

    "+"  -> "[[A]]"            the answer shown first is better
    "-"  -> " [[B]]"           the answer shown second is better
    "~"  -> "([[C]]"           a tie
    "?"  -> "I cannot tell."   no verdict (greedily; sampled, one of ``UNSURE``, no verdict either)

The character is chosen by the first characters of the question and of the two answers shown
(``x`` the one shown as Assistant A, ``y`` as B), in this order:

- the question does not start with "!"         -> "?"  (so a test can tell which instruction is shown)
- x is "*"                                       -> "+"  (a judge biased to whatever it reads first)
- x or y is "?"                                  -> "?"
- otherwise by rank, "+" 2 > "~" 1 > "-" 0 > anything else -1: x higher "+", y higher "-", equal "~".

So ("-…", "+…") is a win for B in both orders, ("+…", "-…") a loss, ("*…", "*…") a tie (the two
readings disagree), ("~…", "~…") a tie, ("*…", "?…") a tie with one reading giving no verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from qwen2_fixture import write_tokenizer
from scripted_fixture import IM_END, NEWLINE, _vocab_bytes, segment

REPLIES = {"+": "[[A]]", "-": " [[B]]", "~": "([[C]]", "?": "I cannot tell."}
# what "?" may also lead to, scored a little under "I cannot tell.": greedy decoding never writes
# them, sampling almost always does (so a test sees whether the judge decodes greedily)
UNSURE = ("Unclear.", "Hard to say.", "No idea.", "Both fine.", "Neither.", "Maybe.", "Pass.", "Skip this.",
          "Dunno.", "Tough call.", "Hmm.", "Equal?", "Perhaps.", "Cannot judge.", "Too close.")

TEMPLATE = (
    "{% set t = messages[-1]['content'] %}"
    "{% set x = t.split(\"Assistant A's Answer]\")[1][1:2] %}{% set y = t.split(\"Assistant B's Answer]\")[1][1:2] %}"
    "{% set rank = {'+': 2, '~': 1, '-': 0} %}"
    "{% if not t.startswith('[User Question]\\n!') %}?{% elif x == '*' %}+{% elif x == '?' or y == '?' %}?"
    "{% elif rank.get(x, -1) > rank.get(y, -1) %}+{% elif rank.get(x, -1) < rank.get(y, -1) %}-{% else %}~{% endif %}"
)


def build_judge_checkpoint(dst: Path, hidden: int = 64) -> Path:
    """A Qwen2 checkpoint (F32 safetensors) in ``dst`` that judges as the module doc says."""
    from safetensors.numpy import save_file

    dst.mkdir(parents=True, exist_ok=True)
    write_tokenizer(dst)
    conf = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    conf["chat_template"] = TEMPLATE
    (dst / "tokenizer_config.json").write_text(json.dumps(conf, indent=2), encoding="utf-8")
    vocab = _vocab_bytes(str(dst / "tokenizer.json"))
    succ = segment([*REPLIES.values(), *UNSURE], vocab)
    # segment() hangs every reply off one start token; hang each off its own character instead
    first_of = {text: _first_token(succ, vocab, text.encode()) for text in [*REPLIES.values(), *UNSURE]}
    del succ[NEWLINE]
    assert len(set(first_of.values())) == len(first_of), "every reply needs a first token of its own"
    for char, text in REPLIES.items():
        succ[vocab[char.encode()]] = [first_of[text]]
    succ[vocab[b"?"]] += [first_of[text] for text in UNSURE]
    lower = {(vocab[b"?"], first_of[text]) for text in UNSURE}
    assert len(succ) <= hidden, f"{len(succ)} tokens with successors need hidden >= {len(succ)}"
    n_vocab, heads, kv_heads = 151936, 4, 2
    head_dim = hidden // heads
    embed = np.zeros((n_vocab, hidden), np.float32)
    head = np.zeros((n_vocab, hidden), np.float32)
    for dim, (tok, nexts) in enumerate(sorted(succ.items())):
        embed[tok, dim] = 1.0
        for nxt in nexts:
            head[nxt, dim] = 0.99 if (tok, nxt) in lower else 1.0
    zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    p = "model.layers.0."
    tensors = {
        "model.embed_tokens.weight": embed, "lm_head.weight": head, "model.norm.weight": np.ones(hidden, np.float32),
        p + "input_layernorm.weight": np.ones(hidden, np.float32),
        p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
        p + "self_attn.q_proj.weight": zeros(hidden, hidden), p + "self_attn.q_proj.bias": zeros(hidden),
        p + "self_attn.k_proj.weight": zeros(kv_heads * head_dim, hidden), p + "self_attn.k_proj.bias": zeros(kv_heads * head_dim),
        p + "self_attn.v_proj.weight": zeros(kv_heads * head_dim, hidden), p + "self_attn.v_proj.bias": zeros(kv_heads * head_dim),
        p + "self_attn.o_proj.weight": zeros(hidden, hidden),
        p + "mlp.gate_proj.weight": zeros(hidden, hidden), p + "mlp.up_proj.weight": zeros(hidden, hidden),
        p + "mlp.down_proj.weight": zeros(hidden, hidden),
    }
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": n_vocab, "hidden_size": hidden,
        "intermediate_size": hidden, "num_hidden_layers": 1, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": IM_END,
        "torch_dtype": "float32", "hidden_act": "silu",
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (dst / "generation_config.json").write_text(json.dumps({"bos_token_id": 151643, "eos_token_id": [151643, IM_END]}),
                                               encoding="utf-8")
    return dst


def _first_token(succ: dict[int, list[int]], vocab: dict[bytes, int], text: bytes) -> int:
    """The first token of the path from NEWLINE that spells ``text`` and then ends."""
    pieces = {i: b for b, i in vocab.items()}

    def spells(tok: int, rest: bytes) -> bool:
        if not rest:
            return IM_END in succ.get(tok, [])
        return any(rest.startswith(pieces.get(n, b"\0")) and spells(n, rest[len(pieces[n]):]) for n in succ.get(tok, []))

    return next(t for t in succ[NEWLINE] if text.startswith(pieces.get(t, b"\0")) and spells(t, text[len(pieces[t]):]))
