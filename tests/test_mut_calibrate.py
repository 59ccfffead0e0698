"""The batch size picked when none is given: the choice rule, the cache and its key, pinned with
timings the test chooses (``choose_parallel(measure=...)``) on a real loaded model (SmolLM2,
weights only: no context, nothing decoded except in the one test of the real measurement)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from localaug.runtime import calibrate
from localaug.runtime.bench import BATCH_SIZES, GPU_BATCH_SIZES, BatchPoint
from localaug.runtime.calibrate import Parallel, affordable, choose_parallel, measure_batch_sizes
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.llama import llama_cpp_version

SHA = "ab" * 32
N_CTX = 512
MEASURED = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}\Z")  # local time with its UTC offset


@pytest.fixture(scope="module")
def engines(smollm2):
    """engines(**options) -> a real Engine (weights only), loaded once per set of options."""
    loaded: dict[tuple, Engine] = {}

    def get(**options) -> Engine:
        key = tuple(sorted(options.items()))
        if key not in loaded:
            loaded[key] = Engine(smollm2, EngineOptions(**{"threads": 1, "device": "cpu", **options}), context=False)
        return loaded[key]

    yield get
    for e in loaded.values():
        e.close()


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A LOCALAUG_HOME two folders below any that exists: the cache makes its way."""
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "a" / "home"))
    monkeypatch.delenv("LOCALAUG_PARALLEL", raising=False)
    return tmp_path / "a" / "home"


@pytest.fixture()
def big_machine(monkeypatch):
    """A machine whose memory affords every batch size (1 TiB)."""
    monkeypatch.setattr(calibrate, "_memory_bytes", lambda: 1 << 40)


class Timings:
    """A measurement that returns the throughputs it was given and records what it was asked."""

    def __init__(self, rates: dict[int, float], sleep: float = 0.0) -> None:
        self.rates, self.sleep, self.calls, self.engines = rates, sleep, [], []

    def __call__(self, engine: Engine, sizes: tuple[int, ...]) -> list[BatchPoint]:
        self.calls.append(sizes)
        self.engines.append(engine)
        time.sleep(self.sleep)
        return [BatchPoint(b, self.rates[b]) for b in sizes]


def rounds(calls: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The sizes measured, one tuple per calibration (sizes measured one at a time, growing)."""
    out: list[tuple[int, ...]] = []
    for sizes in calls:
        if out and sizes[0] > out[-1][-1]:
            out[-1] += sizes
        else:
            out.append(sizes)
    return out


def never(engine: Engine, sizes: tuple[int, ...]) -> list[BatchPoint]:
    raise AssertionError("measured although the answer was known")


def cpu_name() -> str:
    m = re.search(r"^model name\s*:\s*(.*?)\s*$", Path("/proc/cpuinfo").read_text(), re.M)
    assert m, "this test machine names its CPU in /proc/cpuinfo"
    return m.group(1)


def cache_of(home: Path) -> dict:
    return json.loads((home / "calibration.json").read_text(encoding="utf-8"))


# --- the choice ------------------------------------------------------------------------------------

CPU_RATES = {1: 10.0, 2: 19.0, 4: 40.0, 8: 41.0, 16: 39.0, 32: 20.0}  # 40 >= 0.97 * 41: the smaller one


def test_the_smallest_batch_size_within_3_percent_of_the_fastest_is_calibrated_and_cached(home, big_machine, engines):
    e = engines()
    timings = Timings({**CPU_RATES, 2: 19.126}, sleep=0.05)
    t0 = time.monotonic()
    p = choose_parallel(e, SHA, N_CTX, measure=timings)
    wall = time.monotonic() - t0
    assert (p.value, p.source) == (4, "calibrated") and 0.05 <= p.seconds <= wall
    assert timings.calls == [(b,) for b in BATCH_SIZES]  # one size at a time: the display moves between them
    assert rounds(timings.calls) == [BATCH_SIZES] and BATCH_SIZES == (1, 2, 4, 8, 16, 32) and timings.engines == [e] * len(BATCH_SIZES)
    key = f"{SHA}|cpu|0|1|False|{llama_cpp_version()}|{cpu_name()}|32"
    cache = cache_of(home)
    assert list(cache) == [key]
    entry = cache[key]
    assert entry["parallel"] == 4
    assert entry["tokens_per_s"] == {"1": 10.0, "2": 19.13, "4": 40.0, "8": 41.0, "16": 39.0, "32": 20.0}
    assert MEASURED.match(entry["measured"]), entry["measured"]
    raw = (home / "calibration.json").read_bytes()
    assert raw.endswith(b"}\n") and raw.startswith(b'{\n  "') and raw.count(b"\n") > 10  # indented, one newline at the end
    again = choose_parallel(e, SHA, N_CTX, measure=never)
    assert again == Parallel(4, "cached", 0.0)


@pytest.mark.parametrize(("rates", "expected"), [
    ({1: 10.0, 2: 10.0, 4: 10.0, 8: 10.0, 16: 10.0, 32: 10.0}, 1),   # a tie: the smallest
    ({1: 97.0, 2: 100.0, 4: 1.0, 8: 1.0, 16: 1.0, 32: 1.0}, 1),      # exactly 3 % under the best still counts
    ({1: 96.9, 2: 100.0, 4: 1.0, 8: 1.0, 16: 1.0, 32: 1.0}, 2),      # just over 3 % under does not
    ({1: 1.0, 2: 2.0, 4: 3.0, 8: 4.0, 16: 5.0, 32: 60.0}, 32),       # the largest when it alone is fastest
])
def test_the_choice_rule(home, big_machine, engines, rates, expected):
    assert choose_parallel(engines(), SHA, N_CTX, measure=Timings(rates)) == Parallel(expected, "calibrated",
                                                                                       pytest.approx(0.0, abs=1.0))


def test_a_given_size_and_the_environment_skip_the_calibration(home, big_machine, engines, monkeypatch):
    e = engines()
    assert choose_parallel(e, SHA, N_CTX, 3, measure=never) == Parallel(3, "given")
    monkeypatch.setenv("LOCALAUG_PARALLEL", "5")
    assert choose_parallel(e, SHA, N_CTX, measure=never) == Parallel(5, "LOCALAUG_PARALLEL")
    assert choose_parallel(e, SHA, N_CTX, 2, measure=never) == Parallel(2, "given")  # the argument wins
    assert not (home / "calibration.json").exists()
    for bad in ("0", "x", "-3", ""):  # not a batch size: calibrated instead
        monkeypatch.setenv("LOCALAUG_PARALLEL", bad)
        assert choose_parallel(e, SHA + bad, N_CTX, measure=Timings(CPU_RATES)).source == "calibrated"


# --- the cache key: one entry per model file, device, GPU layers, threads, KV type, CPU, largest size --


def test_every_key_field_misses_the_cache_and_keeps_the_other_entries(home, big_machine, engines, monkeypatch):
    timings = Timings(CPU_RATES)
    base = choose_parallel(engines(), SHA, N_CTX, measure=timings)
    assert base.source == "calibrated" and len(rounds(timings.calls)) == 1
    variants = [
        (engines(), "cd" * 32, N_CTX),                 # another model file
        (engines(threads=2), SHA, N_CTX),              # threads
        (engines(kv_f32=True), SHA, N_CTX),            # the KV cache's type
        (engines(device="auto", gpu_layers=0), SHA, N_CTX),  # the device
    ]
    for engine, sha, n_ctx in variants:
        assert choose_parallel(engine, sha, n_ctx, measure=timings).source == "calibrated"
    assert len(rounds(timings.calls)) == 1 + len(variants)
    keys = set(cache_of(home))
    version, cpu = llama_cpp_version(), cpu_name()
    assert keys == {
        f"{SHA}|cpu|0|1|False|{version}|{cpu}|32",
        f"{'cd' * 32}|cpu|0|1|False|{version}|{cpu}|32",
        f"{SHA}|cpu|0|2|False|{version}|{cpu}|32",
        f"{SHA}|cpu|0|1|True|{version}|{cpu}|32",
        f"{SHA}|auto|0|1|False|{version}|{cpu}|32",
    }
    for engine, sha, n_ctx in [(engines(), SHA, N_CTX), *variants]:  # all of them hit now
        assert choose_parallel(engine, sha, n_ctx, measure=never).source == "cached"
    monkeypatch.setattr(calibrate, "CPUINFO", home / "cpuinfo")  # another CPU model
    (home / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Other CPU 9000\n", encoding="utf-8")
    assert choose_parallel(engines(), SHA, N_CTX, measure=timings).source == "calibrated"
    assert f"{SHA}|cpu|0|1|False|{version}|Other CPU 9000|32" in cache_of(home)


def test_a_longer_context_that_affords_fewer_sizes_is_another_entry(home, engines, monkeypatch):
    e = engines()
    per_seq = N_CTX * e.kv_bytes_per_token
    # a quarter of the memory holds exactly 9 sequences (parallel 8 and the one the batch keeps spare)
    monkeypatch.setattr(calibrate, "_memory_bytes", lambda: 4 * 9 * per_seq)
    timings = Timings(CPU_RATES)
    assert choose_parallel(e, SHA, N_CTX, measure=timings) == Parallel(4, "calibrated", pytest.approx(0.0, abs=1.0))
    assert rounds(timings.calls) == [(1, 2, 4, 8)]
    assert set(cache_of(home)) == {f"{SHA}|cpu|0|1|False|{llama_cpp_version()}|{cpu_name()}|8"}
    assert cache_of(home)[f"{SHA}|cpu|0|1|False|{llama_cpp_version()}|{cpu_name()}|8"]["tokens_per_s"] == \
        {"1": 10.0, "2": 19.0, "4": 40.0, "8": 41.0}


def test_a_gpu_model_measures_the_gpu_sizes(home, big_machine, engines):
    e = engines(device="auto", gpu_layers=2)  # this llama.cpp build may run them on the CPU: the key still says 2
    assert e.gpu_layers == 2
    rates = {b: float(b) for b in GPU_BATCH_SIZES}
    timings = Timings(rates)
    assert choose_parallel(e, SHA, N_CTX, measure=timings).value == 256
    assert rounds(timings.calls) == [(1, 2, 4, 8, 16, 32, 64, 128, 256)]
    assert list(cache_of(home)) == [f"{SHA}|auto|2|1|False|{llama_cpp_version()}|{cpu_name()}|256"]


# --- the cache file: damaged entries and files are measured again, never trusted ---------------------


@pytest.mark.parametrize("entry", [{"parallel": 0}, {"parallel": "4"}, {"parallel": 2.5}, {"parallel": -1}, {}, [4], 4,
                                   None, {"tokens_per_s": {"4": 1.0}}])
def test_a_damaged_entry_is_measured_again_and_replaced(home, big_machine, engines, entry):
    key = f"{SHA}|cpu|0|1|False|{llama_cpp_version()}|{cpu_name()}|32"
    home.mkdir(parents=True)
    (home / "calibration.json").write_text(json.dumps({key: entry, "other": {"parallel": 7}}), encoding="utf-8")
    timings = Timings(CPU_RATES)
    assert choose_parallel(engines(), SHA, N_CTX, measure=timings).source == "calibrated"
    cache = cache_of(home)
    assert cache["other"] == {"parallel": 7} and cache[key]["parallel"] == 4 and len(rounds(timings.calls)) == 1


def test_a_valid_entry_of_one_is_a_hit(home, big_machine, engines):
    key = f"{SHA}|cpu|0|1|False|{llama_cpp_version()}|{cpu_name()}|32"
    home.mkdir(parents=True)
    (home / "calibration.json").write_text(json.dumps({key: {"parallel": 1}}), encoding="utf-8")
    assert choose_parallel(engines(), SHA, N_CTX, measure=never) == Parallel(1, "cached")


@pytest.mark.parametrize("content", [b"\x00\xff not json", b"[1, 2]", b"", b'{"a": '])
def test_a_damaged_cache_file_is_rewritten_whole(home, big_machine, engines, content):
    home.mkdir(parents=True)
    (home / "calibration.json").write_bytes(content)
    assert choose_parallel(engines(), SHA, N_CTX, measure=Timings(CPU_RATES)).value == 4
    cache = cache_of(home)
    assert [v["parallel"] for v in cache.values()] == [4]


def test_an_unwritable_home_still_gives_the_choice_and_measures_again_next_time(tmp_path, monkeypatch, big_machine,
                                                                                 engines):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "file" / "home"))  # under a file: nothing can be written
    monkeypatch.delenv("LOCALAUG_PARALLEL", raising=False)
    timings = Timings(CPU_RATES)
    assert choose_parallel(engines(), SHA, N_CTX, measure=timings).value == 4
    assert choose_parallel(engines(), SHA, N_CTX, measure=timings).source == "calibrated"
    assert len(rounds(timings.calls)) == 2


# --- memory, CPU and the sizes the memory affords ---------------------------------------------------


def test_affordable_sizes_at_the_memory_boundary(engines, monkeypatch):
    e = engines()
    per_seq = 100 * e.kv_bytes_per_token
    for spare_sequences, expected in [(9, (1, 2, 4, 8)), (17, (1, 2, 4, 8, 16)), (16, (1, 2, 4, 8)), (3, (1, 2)),
                                      (2, (1,)), (1, (1,)), (33, BATCH_SIZES)]:
        monkeypatch.setattr(calibrate, "_memory_bytes", lambda s=spare_sequences: 4 * s * per_seq)
        assert affordable(e, 100, BATCH_SIZES) == expected, spare_sequences
    monkeypatch.setattr(calibrate, "_memory_bytes", lambda: 4 * 9 * per_seq - 1)  # one byte short of 9 sequences
    assert affordable(e, 100, BATCH_SIZES) == (1, 2, 4)
    assert affordable(e, 100, (8, 16)) == (8,)  # nothing fits: the smallest given
    f32 = engines(kv_f32=True)
    assert f32.kv_bytes_per_token == 2 * e.kv_bytes_per_token
    monkeypatch.setattr(calibrate, "_memory_bytes", lambda: 4 * 9 * per_seq)
    assert affordable(f32, 100, BATCH_SIZES) == (1, 2)  # 3 sequences of twice the bytes fit, 5 do not
    assert affordable(f32, 50, BATCH_SIZES) == (1, 2, 4, 8)


def test_memory_is_the_physical_memory_or_8_gib_when_unknown(monkeypatch):
    import os

    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    assert calibrate._memory_bytes() == pages * size > 1 << 28
    for error in (ValueError, OSError, AttributeError):
        def broken(name: str, error=error) -> int:
            raise error(name)

        monkeypatch.setattr(calibrate.os, "sysconf", broken)
        assert calibrate._memory_bytes() == 8 * 1024 ** 3


def test_the_cpu_is_named_by_the_first_model_name_line(tmp_path, monkeypatch):
    assert calibrate._cpu() == cpu_name()
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(calibrate, "CPUINFO", info)
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t:  Vendor CPU: rev 2 @ 3.0GHz \n"
                    "model name\t: Second\n", encoding="utf-8")
    assert calibrate._cpu() == "Vendor CPU: rev 2 @ 3.0GHz"
    import platform

    info.write_text("processor\t: 0\nCPU part\t: 0xd0c\n", encoding="utf-8")  # an ARM board names no model
    assert calibrate._cpu() == (platform.processor() or platform.machine()) != ""
    info.unlink()  # not Linux
    assert calibrate._cpu() == (platform.processor() or platform.machine())
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert calibrate._cpu() == "riscv64"
    monkeypatch.setattr(platform, "processor", lambda: "Intel64 Family 6")
    assert calibrate._cpu() == "Intel64 Family 6"


def test_how_the_choice_is_described():
    assert Parallel(8, "calibrated", 25.6).describe() == "batch size 8, calibrated for this machine in 26 s"
    assert Parallel(8, "cached").describe() == "batch size 8, calibrated for this machine earlier"
    assert Parallel(3, "given").describe() == "batch size 3"
    assert Parallel(5, "LOCALAUG_PARALLEL").describe() == "batch size 5"


def test_the_real_measurement_is_localaugs_batched_throughput_alone(engines):
    points = measure_batch_sizes(engines(), (1, 2))
    assert [p.parallel for p in points] == [1, 2]
    assert all(p.tokens_per_s > 0 and p.raw_tokens_per_s is None for p in points)  # no raw llama_decode curve


def test_each_batch_size_prefills_the_prompt_once_and_decodes_every_sequence(engines, monkeypatch):
    """The calibration's sequences are samples forked from one prefill: the prompt is decoded once
    per batch size (not once per sequence), and each of the ``parallel`` sequences generates every
    calibration token."""
    from localaug.runtime.batch import BatchEngine

    e = engines()
    prompt = e.tokenize(calibrate.CALIBRATION_PROMPT)
    seen: list[tuple[int, int, list[int]]] = []
    real_run = BatchEngine.run

    def run(self, requests):
        results = list(real_run(self, requests))
        seen.append((self.parallel, self.prefix.stats.decoded, sorted(r.generation.completion_tokens for r in results)))
        return iter(results)

    monkeypatch.setattr(BatchEngine, "run", run)
    points = measure_batch_sizes(e, (1, 3))
    assert seen == [(1, len(prompt), [calibrate.CALIBRATION_TOKENS]), (3, len(prompt), [calibrate.CALIBRATION_TOKENS] * 3)]
    assert [p.parallel for p in points] == [1, 3] and all(p.tokens_per_s > 0 for p in points)


class Shown:
    """A progress display that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage(self, name: str, total: int | None, unit: str, done: int = 0) -> None:
        self.events.append(("stage", name, total, unit, done))

    def advance(self, amount: int, item: str = "") -> None:
        self.events.append(("advance", amount, item))

    def finish(self) -> None:
        self.events.append(("finish",))


def test_the_calibration_says_what_it_measures_and_moves_at_each_size(home, big_machine, engines):
    from localaug.core.progress import reporting

    shown = Shown()
    with reporting(shown):
        choose_parallel(engines(), SHA, N_CTX, measure=Timings(CPU_RATES))
        choose_parallel(engines(), SHA, N_CTX, measure=never)  # cached: nothing to show
    assert shown.events == [
        ("stage", "calibrating: decode speed at each batch size this memory affords, to choose how many sequences to "
                  "decode together (once per model and machine)", 6, "batch sizes", 0),
        ("advance", 1, "1 at a time"), ("advance", 1, "2 at a time"), ("advance", 1, "4 at a time"),
        ("advance", 1, "8 at a time"), ("advance", 1, "16 at a time"), ("advance", 1, "32 at a time"), ("finish",)]
