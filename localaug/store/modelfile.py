"""Ollama Modelfiles for family models: FROM the stored GGUF, the exact prompt format as TEMPLATE,
stop strings and sampling defaults from the model's manifest (models/*.toml).

The TEMPLATE is not typed here: it is what ``prompts.qwen2_chatml`` renders for a conversation
whose system, user and assistant contents are placeholders, with the placeholders swapped for
Ollama's Go-template fields ``{{ .System }}``, ``{{ .Prompt }}`` and ``{{ .Response }}``. SYSTEM is
``prompts.DEFAULT_SYSTEM``, so Ollama builds, byte for byte, the prompt localaug builds (Ollama
drops what follows ``{{ .Response }}`` for the turn being generated). One difference: localaug
NFC-normalises the user turn as the Qwen2 tokenizer does; Ollama sends it as typed.

Only family models get a Modelfile. Any other GGUF runs in localaug's *teacher* mode, whose prompt
is a task system prompt plus in-context examples rendered through the GGUF's own Jinja chat
template; a Jinja template does not translate reliably into a Go template, so those are refused
with a one-line error rather than exported with a prompt that differs from localaug's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localaug._version import __version__
from localaug.core.errors import ModelNotFoundError, UsageError
from localaug.family import prompts, registry
from localaug.family.registry import ModelSpec, context_size

GO_SYSTEM, GO_PROMPT, GO_RESPONSE = "{{ .System }}", "{{ .Prompt }}", "{{ .Response }}"
# Placeholders no real text contains; replaced by the Go fields after rendering.
_SYSTEM, _PROMPT, _RESPONSE = "\x00system\x00", "\x00prompt\x00", "\x00response\x00"


def chatml_template() -> str:
    """The Qwen2 ChatML turn sequence of ``prompts.qwen2_chatml`` as an Ollama TEMPLATE."""
    text = prompts.qwen2_chatml(
        [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _PROMPT},
         {"role": "assistant", "content": _RESPONSE}],
        add_generation_prompt=False,
    )
    if "{{" in text or "}}" in text or '"""' in text:  # would be read as template actions or end the string
        raise AssertionError("the ChatML literal text cannot be written into a Go template as is")
    # Ollama sets .System for the first turn only: later turns must not get an empty system block
    system = prompts.qwen2_chatml([{"role": "system", "content": _SYSTEM}], add_generation_prompt=False)
    assert text.startswith(system)
    text = "{{ if .System }}" + system + "{{ end }}" + text[len(system):]
    return text.replace(_SYSTEM, GO_SYSTEM).replace(_PROMPT, GO_PROMPT).replace(_RESPONSE, GO_RESPONSE)


@dataclass(frozen=True)
class FormatInfo:
    template: Callable[[], str]
    system: str
    usage: str  # what to send as the message, for the Modelfile's header comment


# One row per prompt format id (models/*.toml `prompt_format`): both are Qwen2 ChatML turns.
FORMATS: dict[str, FormatInfo] = {
    "qwen2-chatml": FormatInfo(
        chatml_template, prompts.DEFAULT_SYSTEM,
        "send the raw instruction as the message; the reply is the refined (or one new) instruction.",
    ),
    "qwen2-response-pairs": FormatInfo(
        chatml_template, prompts.DEFAULT_SYSTEM,
        "send seed pairs as '### Instruction' / '### Response' blocks (blank line between); the reply is a new pair.",
    ),
}


@dataclass(frozen=True)
class Modelfile:
    text: str
    gguf: Path
    spec: ModelSpec


def render(gguf: Path, spec: ModelSpec, quant: str | None = None) -> str:
    """The Modelfile text for the family model ``spec`` stored at ``gguf``."""
    fmt = FORMATS.get(spec.prompt_format)
    if fmt is None:
        raise UsageError(f"{spec.name} has prompt format {spec.prompt_format!r}, which has no Modelfile template")
    path = str(Path(gguf).resolve())
    if "\n" in path:
        raise UsageError(f"the GGUF path {path!r} cannot be written into a Modelfile: move the store (LOCALAUG_HOME)")
    s = spec.sampling
    lines = [
        f"# Ollama Modelfile for {spec.name}{f' ({quant})' if quant else ''}, written by localaug {__version__}.",
        f"# Prompt format {spec.prompt_format}: Qwen2 ChatML with the default system turn, as localaug prompts it;",
        f"# {fmt.usage}",
        f"# Use: ollama create {spec.name} -f Modelfile && ollama run {spec.name}",
        f"FROM {path}",
        f'TEMPLATE """{fmt.template()}"""',
        f'SYSTEM """{fmt.system}"""',
        *(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in spec.stop),
        f"PARAMETER temperature {s.temperature}",
        f"PARAMETER top_p {s.top_p}",
        f"PARAMETER top_k {s.top_k}",
        f"PARAMETER num_predict {s.max_tokens}",
        f"PARAMETER num_ctx {_context(spec)}",
    ]
    if spec.license and spec.license != "unknown":
        lines.append(f'LICENSE """{spec.license}"""')
    return "\n".join(lines) + "\n"


def _context(spec: ModelSpec) -> int:
    return context_size(None, spec.architecture.context_length)  # the context localaug itself starts with


def for_model(model: str, quant: str | None = None) -> Modelfile:
    """The Modelfile of a stored model (name, repo id or checkpoint folder) or of a GGUF file.

    Never pulls or converts: a model that is not stored is an error saying how to bring it in.
    """
    from localaug.convert import DEFAULT_QUANT
    from localaug.family.styles import family_spec_from_metadata
    from localaug.store.gguf_info import read_kv
    from localaug.store.layout import raise_if_damaged
    from localaug.store.local import matching

    path = Path(model).expanduser()
    spec: ModelSpec | None = None
    if path.is_file():
        gguf, q = path, None
    else:
        entries = matching(model, quant)
        if not entries:
            what = f"{model} {quant.strip().upper()}" if quant else model
            raise ModelNotFoundError(f"{what} is not in the store: `localaug pull {model}` first, or pass a .gguf file")
        spec = registry.find(model) or next((registry.find(e.family) for e in entries if e.family), None)
        default = spec.default_quant if spec else DEFAULT_QUANT
        entry = next((e for e in entries if e.quant == default), None) or max(entries, key=lambda e: e.created)
        raise_if_damaged(entry, deep=False)
        gguf, q = entry.path, entry.quant
    spec = spec or family_spec_from_metadata(read_kv(gguf))
    if spec is None:
        raise UsageError(
            f"{model} is not a family model: localaug runs it in teacher mode (a task prompt with in-context examples "
            "through its own Jinja chat template), which a Modelfile TEMPLATE cannot reproduce exactly; "
            "run it with `localaug refine --model ...` instead"
        )
    return Modelfile(render(gguf, spec, q), Path(gguf).resolve(), spec)


def write(modelfile: Modelfile, output: Path) -> None:
    """Write the Modelfile whole or not at all (temp name beside ``output``, then rename)."""
    import os

    from localaug.core.files import refuse_overwriting_inputs, temp_beside

    out = Path(output).expanduser()
    if out.is_dir():
        raise UsageError(f"{out} is a folder: pass a file name, such as {out / 'Modelfile'}")
    refuse_overwriting_inputs(out, [modelfile.gguf])
    with temp_beside(out) as tmp:
        tmp.write_text(modelfile.text, encoding="utf-8")
        os.replace(tmp, out)
