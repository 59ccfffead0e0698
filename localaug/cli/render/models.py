"""What the model commands show: a GGUF's facts, a conversion or pull done, the family and the
store, removals, bundles; and the same results as JSON values."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from localaug.cli.render import human_bytes, plain

if TYPE_CHECKING:
    from localaug.convert import ConvertResult
    from localaug.family.registry import ModelSpec
    from localaug.store.bundle import ExportResult, ImportResult
    from localaug.store.gguf_info import GGUFInfo
    from localaug.store.local import StoreEntry


def render_gguf_info(console: Console, info: GGUFInfo) -> None:
    table = Table(title=plain(info.path), show_header=False, title_justify="left")
    table.add_column("key", style="bold cyan")
    table.add_column("value", overflow="fold")
    table.add_row("architecture", plain(info.architecture))
    table.add_row("name", plain(info.name or "-"))
    table.add_row("size", human_bytes(info.size_bytes))
    table.add_row("quant type", info.file_type or "-")
    table.add_row("parameters", f"{info.parameter_count / 1e6:,.1f} M")
    table.add_row("tensors", f"{info.tensor_count} (" + ", ".join(f"{k}: {v}" for k, v in info.tensor_types.items()) + ")")
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "rope.freq_base"):
        if key in info.hparams:
            table.add_row(key, plain(info.hparams[key]))
    tok = info.tokenizer
    table.add_row(
        "tokenizer",
        plain(f"{tok.get('model', '?')} (pre {tok.get('pre', '?')}), {tok.get('tokens', 0)} tokens, {tok.get('merges', 0)} merges"),
    )
    table.add_row("special ids", ", ".join(f"{k.removesuffix('_token_id')}={v}" for k, v in tok.items() if k.endswith("_id")) or "-")
    table.add_row("add bos", str(tok.get("add_bos_token", "-")))
    template = info.chat_template
    table.add_row("chat template", plain((template[:200] + ("…" if len(template) > 200 else "")) if template else "none"))
    for k, v in info.provenance.items():
        table.add_row(plain(k), plain(v))
    console.print(table)


def render_convert_done(console: Console, result: ConvertResult) -> None:
    console.print(
        f"[green]wrote[/green] {escape(str(result.path))} ({result.quant}, {human_bytes(result.n_bytes)}, "
        f"{result.n_parameters / 1e6:,.1f} M parameters) in {result.seconds:.1f}s",
        highlight=False,
        soft_wrap=True,  # one line in logs and pipes, however long the path
    )


def convert_json(result: ConvertResult, sha256: str) -> dict[str, Any]:
    return {"path": str(result.path), "quant": result.quant, "size_bytes": result.n_bytes, "sha256": sha256,
            "tensors": result.n_tensors, "parameters": result.n_parameters, "seconds": round(result.seconds, 3)}


def render_pull_done(console: Console, entry: StoreEntry) -> None:
    what = f"{entry.name} {entry.quant}"
    detail = f"{human_bytes(entry.size)}, sha256 {entry.sha256[:12]}, from {entry.source.describe()}"
    if entry.reused:
        console.print(f"[green]{escape(what)} is already in the store[/green] and intact: {escape(str(entry.path))} "
                      f"({escape(detail)})", highlight=False)
    else:
        console.print(f"[green]pulled[/green] {escape(what)} -> {escape(str(entry.path))} ({escape(detail)})", highlight=False)


def entry_json(entry: StoreEntry) -> dict[str, Any]:
    """A stored GGUF: name, path, quant, size (bytes), sha256, where it came from."""
    return {**entry.to_dict(), "origin": entry.source.origin()}


def pull_json(entry: StoreEntry) -> dict[str, Any]:
    return {**entry_json(entry), "reused": entry.reused}


def _pulled(spec: ModelSpec, entries: list[StoreEntry]) -> list[str]:
    return [e.quant for e in entries if e.family == spec.name]


def models_json(specs: tuple[ModelSpec, ...], entries: list[StoreEntry]) -> dict[str, Any]:
    return {
        "family": [
            {"name": s.name, "repo": s.repo, "task": s.task, "parameters": s.parameters,
             "default_quant": s.default_quant, "pulled": _pulled(s, entries)}
            for s in specs
        ],
        "store": [entry_json(e) for e in entries],
    }


def render_models(console: Console, specs: tuple[ModelSpec, ...], entries: list[StoreEntry], store_root: Path) -> None:
    family = Table(title="model family", title_justify="left")
    family.add_column("name", no_wrap=True)
    for col in ("task", "size", "Hugging Face repo", "default quant", "pulled"):
        family.add_column(col, overflow="fold")
    for s in specs:
        family.add_row(*map(plain, (s.name, s.task, s.parameters, s.repo, s.default_quant, ", ".join(_pulled(s, entries)) or "-")))
    console.print(family)
    if not entries:
        console.print(f"the store ({escape(str(store_root))}) is empty: [bold]localaug pull NAME[/bold] brings a model in",
                      highlight=False)
        return
    stored = Table(title=plain(f"local store ({store_root})"), title_justify="left")
    for col in ("name", "quant", "size", "origin", "sha256"):
        stored.add_column(col, overflow="fold")
    for e in entries:
        stored.add_row(*map(plain, (e.name, e.quant, human_bytes(e.size), e.source.origin(), e.sha256[:12])))
    console.print(stored)


def render_removed(console: Console, entries: list[StoreEntry]) -> None:
    for e in entries:
        console.print(f"[green]removed[/green] {escape(e.name)} {escape(e.quant)} ({human_bytes(e.size)}, "
                      f"{escape(str(e.path))})", highlight=False, soft_wrap=True)


def render_bundle_exported(console: Console, result: ExportResult) -> None:
    for e in result.entries:
        console.print(f"  {e.name} {e.quant} ({human_bytes(e.size)}, sha256 {e.sha256[:12]}, {e.source.origin()})",
                      markup=False, highlight=False, soft_wrap=True)
    console.print(f"[green]wrote[/green] {escape(str(result.path))} ({len(result.entries)} file(s), {human_bytes(result.size)}) "
                  f"in {result.seconds:.1f}s: carry it over and run "
                  f"[bold]localaug bundle import {escape(result.path.name)}[/bold]", highlight=False, soft_wrap=True)


def bundle_exported_json(result: ExportResult) -> dict[str, Any]:
    return {"path": str(result.path), "size_bytes": result.size, "seconds": round(result.seconds, 3),
            "models": [entry_json(e) for e in result.entries]}


def render_bundle_imported(console: Console, result: ImportResult) -> None:
    for label, entries in (("added", result.added), ("replaced", result.replaced), ("already in the store", result.unchanged)):
        for e in entries:
            console.print(f"  {label}: {e.name} {e.quant} -> {e.path} ({human_bytes(e.size)}, sha256 {e.sha256[:12]})",
                          markup=False, highlight=False, soft_wrap=True)
    landed = len(result.added) + len(result.replaced)
    console.print(f"[green]imported[/green] {escape(result.archive.name)}: {landed} file(s) landed, {len(result.unchanged)} already "
                  "there; every sha256 verified", highlight=False, soft_wrap=True)


def bundle_imported_json(result: ImportResult) -> dict[str, Any]:
    return {"archive": str(result.archive), "added": [entry_json(e) for e in result.added],
            "replaced": [entry_json(e) for e in result.replaced], "unchanged": [entry_json(e) for e in result.unchanged]}
