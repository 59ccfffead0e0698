"""What the generating commands show: a reply as it streams, refined / expanded / paired texts,
shortfalls, and the machine checks (doctor, bench)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from localaug.cli.render import plain

if TYPE_CHECKING:
    from pathlib import Path

    from localaug.augment.tasks import ExpandResult
    from localaug.runtime.bench import BenchResult
    from localaug.runtime.engine import Generation


class StreamView:
    """Shows a reply as it streams: a live panel on a TTY; nothing until the end otherwise."""

    def __init__(self, console: Console, title: str) -> None:
        self._console, self._title, self._text = console, title, ""
        self._live = Live(Panel("", title=title), console=console, refresh_per_second=12, transient=True) if console.is_terminal else None
        if self._live:
            self._live.start()

    def piece(self, text: str) -> None:
        self._text += text
        if self._live:
            self._live.update(Panel(plain(self._text), title=self._title, border_style="cyan"))

    def close(self) -> None:
        if self._live:
            self._live.stop()
            self._live = None


def render_refined(console: Console, original: str, refined: str, compare: bool, footer: str) -> None:
    if compare:
        table = Table(show_lines=True, expand=True)
        table.add_column("original", ratio=1)
        table.add_column("refined", ratio=2)
        table.add_row(plain(original), plain(refined))
        console.print(table)
    elif console.is_terminal:
        console.print(Panel(plain(refined), title="refined", border_style="green"))
    else:
        console.out(refined, highlight=False)
    if console.is_terminal:
        console.print(f"[dim]{footer}[/dim]", highlight=False)


def refined_json(instruction: str, refined: str, reason: str | None, gen: Generation, model: Path,
                 seed: int | None) -> dict[str, Any]:
    return {"input": instruction, "output": refined, "status": "filtered" if reason else "ok", "rejected": reason,
            "model": str(model), "seed": seed, "finish_reason": gen.finish_reason, "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens, "seconds": round(gen.seconds, 3)}


def expanded_json(seed_text: str, result: ExpandResult) -> dict[str, Any]:
    return {"input": seed_text, "instructions": result.items, "samples": result.samples, "rejected": result.rejected,
            "shortfall": result.shortfall}


def pairs_json(result: ExpandResult) -> dict[str, Any]:
    return {"pairs": [{"instruction": p.instruction, "response": p.response} for p in result.items],
            "samples": result.samples, "rejected": result.rejected, "shortfall": result.shortfall}


def render_rejected_refinement(console: Console, refined: str, reason: str) -> None:
    """A refine reply a job would not keep: why, and what the model wrote, on stderr."""
    from localaug.augment.filters import REASONS

    console.print(f"[yellow]not a refinement:[/yellow] {REASONS.get(reason, reason)} ({reason}); the model wrote: "
                  f"{escape(refined[:200])}", highlight=False, soft_wrap=True)
    console.print("try another --seed or --temperature, or a larger model", highlight=False)


def render_item(console: Console, index: int, text: str) -> None:
    if console.is_terminal:
        console.print(f"[bold]{index}.[/bold] {escape(text)}", highlight=False, soft_wrap=True)
    else:
        console.out(f"{index}. {text}", highlight=False)


def render_pair(console: Console, index: int, instruction: str, response: str) -> None:
    if console.is_terminal:
        console.print(Panel(f"[bold]Instruction[/bold]\n{escape(instruction)}\n\n[bold]Response[/bold]\n{escape(response)}",
                            title=f"pair {index}"))
    else:
        console.out(f"### Instruction\n{instruction}\n\n### Response\n{response}\n", highlight=False)


def render_shortfall(console: Console, found: int, requested: int, samples: int, rejected: dict[str, int]) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"
    msg = f"{found}/{requested} from {samples} samples (rejected: {reasons})"
    if found < requested:
        console.print(f"[yellow]warning:[/yellow] only {msg}; raise --max-tokens or try another --seed", highlight=False, soft_wrap=True)
    else:
        console.print(f"[dim]{msg}[/dim]", highlight=False, soft_wrap=True)


def render_doctor(console: Console, report: dict[str, Any]) -> None:
    """``localaug doctor``'s facts (``augment.doctor``), worded for people."""
    from localaug.cli.render import human_bytes
    from localaug.core.install import gpu_hint

    gpu = report["gpu_offload"]
    version = report["llama_cpp_python"]
    if version != report["llama_cpp_python_supported"]:
        version += f" (localaug is tested with {report['llama_cpp_python_supported']})"
    rows = [
        ("localaug", report["localaug"]), ("llama-cpp-python", version),
        ("gpu offload", "yes" if gpu else f"no: a CPU build; for a GPU, {gpu_hint('cuda')} (Metal: -DGGML_METAL=on)"),
        ("default device", "gpu (all layers)" if gpu else "cpu"), ("llama.cpp features", report["llama_cpp_features"]),
        ("cpu cores", str(report["cpu_cores"])), ("memory", human_bytes(report["memory_bytes"])), ("store", report["store"]),
        ("models in store", str(report["models_in_store"])), ("store size", human_bytes(report["store_bytes"])),
    ]
    table = Table(title="localaug doctor", show_header=False, title_justify="left")
    table.add_column("check", style="bold cyan")
    table.add_column("value", overflow="fold")
    for k, v in rows:
        table.add_row(k, plain(v))
    console.print(table)


def render_batch_curve(console: Console, data: dict[str, Any]) -> None:
    table = Table(title=plain(f"localaug bench --batch: {data['model']}"), title_justify="left")
    for col in ("sequences", "localaug tok/s", "raw llama_decode tok/s", "localaug / raw"):
        table.add_column(col, justify="right")
    for p in data["curve"]:
        mark = " ◀" if p["parallel"] == data["chosen"] else ""
        table.add_row(f"{p['parallel']}{mark}", f"{p['tokens_per_s']:.1f}", f"{p['raw_tokens_per_s']:.1f}", f"{p['vs_raw']:.2f}×")
    console.print(table)
    console.print(f"[dim]{data['tokens']} generated tokens per sequence, {data['threads']} threads, GPU layers "
                  f"{data['gpu_layers']}; ◀ the batch size localaug runs at (the smallest within 3 % of the best)[/dim]",
                  highlight=False)


def render_bench(console: Console, r: BenchResult) -> None:
    table = Table(title=f"localaug bench: {r.model}", title_justify="left")
    table.add_column("measure", style="bold cyan")
    table.add_column("value", justify="right")
    rows = [
        ("threads / GPU layers", f"{r.threads} / {r.gpu_layers}"),
        ("model load", f"{r.load_seconds:.2f} s"),
        ("prompt", f"{r.prompt_tokens} tokens"),
        ("time to first token", f"{r.time_to_first_token_s * 1000:.0f} ms"),
        ("prefill", f"{r.prefill_tokens_per_s:.1f} tok/s"),
        ("decode (localaug, sampling included)", f"{r.decode_tokens_per_s:.1f} tok/s"),
        ("decode (raw llama_decode loop)", f"{r.raw_decode_tokens_per_s:.1f} tok/s"),
        ("localaug / raw", f"{r.decode_vs_raw:.2f}×"),
    ]
    for k, v in rows:
        table.add_row(k, plain(v))
    console.print(table)
    console.print(f"[dim]median of {r.repeats} runs of {r.generated_tokens} tokens[/dim]", highlight=False)
