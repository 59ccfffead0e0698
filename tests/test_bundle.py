"""Model bundles (`localaug bundle export/import`) and Ollama Modelfiles (`localaug export-modelfile`).

Store A holds qwen2-refine:1.5b converted from a tiny Qwen2 checkpoint laid out as a Hugging Face
cache snapshot (so it has the family's name and a repo + commit provenance). Bundles go from A
into fresh stores; damaged and malicious archives must leave the target store exactly as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localaug.cli.main import app
from localaug.family import registry
from localaug.family.prompts import Pair
from localaug.family.styles import PromptStyle, build_prompt
from localaug.store import local as store
from localaug.store import modelfile
from localaug.store.bundle import BUNDLE_MANIFEST

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
REFINE = "qwen2-refine:1.5b"
REFINE_REPO = "alibaba-pai/Qwen2-1.5B-Instruct-Refine"
FOLDER = store.safe_name(REFINE)
MEMBER = f"models/{FOLDER}/Q8_0.gguf"
runner = CliRunner()


def _invoke(home: Path, *args: str):
    return runner.invoke(app, list(args), env={"LOCALAUG_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})


def _one_line_error(result) -> str:
    """The error: one line, the last on stderr (plain progress lines for logs may come before it)."""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def _listing(root: Path) -> list[tuple[str, int, int]]:
    """Every path under ``root``, files with their size and mtime: equal listings mean an untouched store.
    (A folder's own mtime changes when a staging folder comes and goes inside it; that is not a change.)"""
    if not root.exists():
        return []
    return sorted((str(p.relative_to(root)), *((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)))
                  for p in root.rglob("*"))


@pytest.fixture(scope="module")
def store_a(tmp_path_factory: pytest.TempPathFactory, qwen2_tied: Path) -> Path:
    """LOCALAUG_HOME of a store holding qwen2-refine:1.5b Q8_0, pulled from a Hugging Face cache snapshot."""
    snap = tmp_path_factory.mktemp("hf") / "hub" / ("models--" + REFINE_REPO.replace("/", "--")) / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in qwen2_tied.iterdir():
        os.link(f, snap / f.name)  # no copy of the weights
    home = tmp_path_factory.mktemp("store-a")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALAUG_HOME", str(home))
        entry = store.pull(str(snap), quant="Q8_0")
    assert (entry.name, entry.family, entry.source.repo, entry.source.commit) == (REFINE, REFINE, REFINE_REPO, COMMIT)
    return home


@pytest.fixture(scope="module")
def bundle(store_a: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("carry") / "models.tar"
    result = _invoke(store_a, "bundle", "export", REFINE, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "localaug bundle import models.tar" in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["models.tar"]  # no temp debris
    return out


def _stored_gguf(home: Path) -> Path:
    return home / "models" / FOLDER / "Q8_0.gguf"


# -- round trip -----------------------------------------------------------------------------------


def test_bundle_layout_and_manifest(bundle: Path, store_a: Path) -> None:
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [BUNDLE_MANIFEST, MEMBER]
        assert all(m.isreg() and m.mode == 0o644 for m in members)
        data = json.loads(tar.extractfile(members[0]).read())  # type: ignore[union-attr]
    [model] = data["models"]
    gguf_path = _stored_gguf(store_a)
    record = model["files"]["Q8_0"]
    assert model["name"] == model["family"] == REFINE
    assert model["registry"]["repo"] == REFINE_REPO and model["registry"]["prompt_format"] == "qwen2-chatml"
    assert record["sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert record["size"] == gguf_path.stat().st_size and record["license"] == "apache-2.0"
    assert record["source"]["repo"] == REFINE_REPO and record["source"]["commit"] == COMMIT


def test_round_trip_into_a_fresh_store_runs_the_same(bundle: Path, store_a: Path, tmp_path: Path) -> None:
    home_b = tmp_path / "store-b"
    result = _invoke(home_b, "bundle", "import", str(bundle))
    assert result.exit_code == 0, result.output
    assert f"added: {REFINE} Q8_0" in result.stdout and "every sha256 verified" in result.stdout
    assert _stored_gguf(home_b).read_bytes() == _stored_gguf(store_a).read_bytes()
    assert sorted(p.name for p in (home_b / "models").iterdir()) == [FOLDER]  # the stage is gone

    listing = _invoke(home_b, "models", "--json")
    assert listing.exit_code == 0, listing.output
    data = json.loads(listing.stdout)
    [entry] = data["store"]
    assert (entry["name"], entry["quant"], entry["family"]) == (REFINE, "Q8_0", REFINE)
    assert entry["source"]["bundle"] == "models.tar" and entry["source"]["repo"] == REFINE_REPO
    assert re.fullmatch(
        rf"imported from bundle models\.tar on \d{{4}}-\d\d-\d\d \(pulled from {REFINE_REPO}@{COMMIT[:12]}\)", entry["origin"]
    )
    assert next(m for m in data["family"] if m["name"] == REFINE)["pulled"] == ["Q8_0"]
    table = _invoke(home_b, "models")
    assert "imported from bundle models.tar on" in table.stdout and f"(pulled from {REFINE_REPO}@{COMMIT[:12]})" in table.stdout
    a_origin = json.loads(_invoke(store_a, "models", "--json").stdout)["store"][0]["origin"]
    assert a_origin == f"pulled from {REFINE_REPO}@{COMMIT[:12]}"

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALAUG_HOME", str(home_b))
        assert [e.name for e in store.verify()] == [REFINE]  # sha256 re-checked

    # The imported model runs, and greedily says exactly what the original says.
    def refine(home: Path) -> dict:
        out = _invoke(home, "refine", "Write a haiku about the sea.", "-m", REFINE, "--temperature", "0",
                      "--max-tokens", "8", "--threads", "1", "--json")
        data = json.loads(out.stdout)
        assert out.exit_code == (0 if data["status"] == "ok" else 1), out.output  # a cut-off reply exits 1, as a job records it
        return data

    a, b = refine(store_a), refine(home_b)
    assert a["output"] == b["output"] and b["model"] == str(_stored_gguf(home_b))

    again = _invoke(home_b, "bundle", "import", str(bundle))  # the same bundle again: nothing changes
    assert again.exit_code == 0, again.output
    assert f"already in the store: {REFINE} Q8_0" in again.stdout and "0 file(s) landed" in again.stdout


# -- refused imports leave the store as it was ----------------------------------------------------


def _flip_byte_in_member(src: Path, dst: Path, member: str) -> None:
    shutil.copyfile(src, dst)
    with tarfile.open(dst) as tar:
        info = tar.getmember(member)
    at = info.offset_data + info.size // 2
    with open(dst, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


def _seed_store(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "keep.txt").write_text("unrelated", encoding="utf-8")


def test_tampered_gguf_is_refused_and_the_store_is_unchanged(bundle: Path, store_a: Path, tmp_path: Path) -> None:
    bad = tmp_path / "tampered.tar"
    _flip_byte_in_member(bundle, bad, MEMBER)
    home_b = tmp_path / "store-b"
    _seed_store(home_b)
    for home, extra in ((home_b, ()), (store_a, ("--force",))):  # fresh, and holding this very model
        before = _listing(home)
        result = _invoke(home, "bundle", "import", str(bad), *extra)
        assert result.exit_code == 1, result.output
        line = _one_line_error(result)
        assert "sha256" in line and "nothing was imported" in line
        assert _listing(home) == before  # no model folder, no stage, no manifest change


def _append(src: Path, dst: Path, info: tarfile.TarInfo, data: bytes = b"") -> None:
    shutil.copyfile(src, dst)
    with tarfile.open(dst, "a") as tar:
        info.size = len(data) if info.isreg() else 0
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def _tarinfo(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


UNSAFE: dict[str, Callable[[Path], tuple[tarfile.TarInfo, bytes]]] = {
    "traversal": lambda tmp: (_tarinfo("../evil"), b"evil"),
    "nested traversal": lambda tmp: (_tarinfo(f"models/{FOLDER}/../../evil"), b"evil"),
    "absolute": lambda tmp: (_tarinfo(str(tmp / "evil")), b"evil"),
    "symlink": lambda tmp: (_tarinfo(f"models/{FOLDER}/evil", tarfile.SYMTYPE, "/etc/passwd"), b""),
    "hard link": lambda tmp: (_tarinfo(f"models/{FOLDER}/evil", tarfile.LNKTYPE, MEMBER), b""),
    "device": lambda tmp: (_tarinfo(f"models/{FOLDER}/evil", tarfile.CHRTYPE), b""),
    "fifo": lambda tmp: (_tarinfo(f"models/{FOLDER}/evil", tarfile.FIFOTYPE), b""),
    "duplicate": lambda tmp: (_tarinfo(MEMBER), b"GGUF"),
    "unlisted file": lambda tmp: (_tarinfo(f"models/{FOLDER}/evil"), b"evil"),
}

WHY = {"traversal": "leaves its folder", "nested traversal": "leaves its folder", "absolute": "an absolute path",
       "symlink": "a link", "hard link": "a link", "device": "not a regular file", "fifo": "not a regular file",
       "duplicate": "a duplicate member", "unlisted file": "does not list"}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_members_are_refused_with_nothing_written(bundle: Path, tmp_path: Path, case: str) -> None:
    bad = tmp_path / "bad.tar"
    _append(bundle, bad, *UNSAFE[case](tmp_path))
    home_b = tmp_path / "store-b"
    _seed_store(home_b)
    before = _listing(tmp_path)
    result = _invoke(home_b, "bundle", "import", str(bad))
    assert result.exit_code == 1, result.output
    line = _one_line_error(result)
    assert "refusing the whole bundle" in line and WHY[case] in line  # refused for what it is
    assert _listing(tmp_path) == before
    assert not list(tmp_path.rglob("evil")) and not (tmp_path.parent / "evil").exists()


def _rebuild(src: Path, dst: Path, edit: Callable[[dict], None], gguf: bytes | None = None, member: str = MEMBER) -> None:
    """A copy of bundle ``src`` with its manifest edited (and optionally other GGUF bytes)."""
    with tarfile.open(src) as tar:
        data = json.loads(tar.extractfile(BUNDLE_MANIFEST).read())  # type: ignore[union-attr]
        payload = gguf if gguf is not None else tar.extractfile(MEMBER).read()  # type: ignore[union-attr]
    edit(data)
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in ((BUNDLE_MANIFEST, json.dumps(data).encode()), (member, payload)):
            info = _tarinfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _set_name(name: str) -> Callable[[dict], None]:
    return lambda d: d["models"][0].update(name=name)


def _set_file(file: str) -> Callable[[dict], None]:
    return lambda d: d["models"][0]["files"]["Q8_0"].update(file=file)


@pytest.mark.parametrize("edit", [_set_name(".."), _set_name("../evil"), _set_name("a\nb"), _set_file("../../evil.gguf"),
                                  lambda d: d.update(format=99), lambda d: d.update(models=[]),
                                  lambda d: d["models"].append(d["models"][0])],
                         ids=["dotdot-name", "traversal-name", "newline-name", "traversal-file", "format", "empty", "twice"])
def test_bad_manifests_are_refused(bundle: Path, tmp_path: Path, edit: Callable[[dict], None]) -> None:
    bad = tmp_path / "bad.tar"
    _rebuild(bundle, bad, edit)
    home_b = tmp_path / "store-b"
    _seed_store(home_b)
    before = _listing(home_b)
    result = _invoke(home_b, "bundle", "import", str(bad))
    assert result.exit_code == 1, result.output
    assert "nothing was imported" in _one_line_error(result)
    assert _listing(home_b) == before and not list(tmp_path.rglob("evil*"))


def test_not_a_bundle(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.addfile(_tarinfo("README"), io.BytesIO(b""))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    cases = ((plain, "not a localaug bundle"), (junk, "not a readable bundle"), (tmp_path / "absent.tar", "does not exist"))
    for path, says in cases:
        result = _invoke(tmp_path / "store-b", "bundle", "import", str(path))
        assert result.exit_code == 1 and says in _one_line_error(result)
    assert not (tmp_path / "store-b").exists()


def test_truncated_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    home_b = tmp_path / "store-b"
    _seed_store(home_b)
    before = _listing(home_b)
    result = _invoke(home_b, "bundle", "import", str(cut))
    assert result.exit_code == 1 and "copy it again" in _one_line_error(result)
    assert _listing(home_b) == before


def test_a_failure_while_landing_is_undone(bundle: Path, store_a: Path, converted, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import localaug.store.bundle.importing

    def disk_full(path: Path, data: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(localaug.store.bundle.importing, "write_json_atomic", disk_full)  # after the GGUF is renamed into place
    home_b = tmp_path / "store-b"
    _seed_store(home_b)
    before = _listing(home_b)
    result = _invoke(home_b, "bundle", "import", str(bundle))
    assert result.exit_code == 1 and "No space left" in _one_line_error(result)
    assert _listing(home_b) == before

    other = converted("tied", "Q8_0").read_bytes()
    different = tmp_path / "different.tar"
    _rebuild(bundle, different, lambda d: d["models"][0]["files"]["Q8_0"].update(
        sha256=hashlib.sha256(other).hexdigest(), size=len(other)), gguf=other)
    home = tmp_path / "store"
    shutil.copytree(store_a, home)
    before = _listing(home)
    result = _invoke(home, "bundle", "import", str(different), "--force")
    assert result.exit_code == 1 and "the store is unchanged" in _one_line_error(result)
    assert _listing(home) == before  # the replaced file is back, with its own mtime
    assert _stored_gguf(home).read_bytes() == _stored_gguf(store_a).read_bytes()


def test_a_broken_store_manifest_stops_an_import_as_itself(bundle: Path, tmp_path: Path) -> None:
    """The import's `except OSError` (the archive's reads, the store's writes) words the errors of the
    file system; a StoreError (an OSError too) is the store's own and keeps its message."""
    home = tmp_path / "store"
    folder = home / "models" / FOLDER
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{not json", encoding="utf-8")
    before = _listing(home)
    result = _invoke(home, "bundle", "import", str(bundle))
    assert result.exit_code == 1
    assert _one_line_error(result) == (
        f"error: the store manifest {folder / 'manifest.json'} is unreadable (Expecting property name enclosed in "
        f"double quotes: line 1 column 2 (char 1)): delete {folder} and pull the model again"
    )
    assert _listing(home) == before


def test_a_different_copy_needs_force(bundle: Path, store_a: Path, converted, tmp_path: Path) -> None:
    other = converted("tied", "Q8_0").read_bytes()  # same weights, other metadata: another sha256
    sha = hashlib.sha256(other).hexdigest()

    def edit(d: dict) -> None:
        d["models"][0]["files"]["Q8_0"].update(sha256=sha, size=len(other))

    different = tmp_path / "different.tar"
    _rebuild(bundle, different, edit, gguf=other)
    home = tmp_path / "store"
    shutil.copytree(store_a, home)
    before = _listing(home)
    refused = _invoke(home, "bundle", "import", str(different))
    assert refused.exit_code == 1 and "pass --force" in _one_line_error(refused)
    assert _listing(home) == before

    forced = _invoke(home, "bundle", "import", str(different), "--force")
    assert forced.exit_code == 0, forced.output
    assert f"replaced: {REFINE} Q8_0" in forced.stdout
    assert _stored_gguf(home).read_bytes() == other
    [entry] = json.loads(_invoke(home, "models", "--json").stdout)["store"]
    assert entry["sha256"] == sha and entry["source"]["bundle"] == "different.tar"
    assert sorted(p.name for p in (home / "models").iterdir()) == [FOLDER]


# -- export failures write nothing ------------------------------------------------------------------


def test_export_unknown_model_is_one_line(store_a: Path, tmp_path: Path) -> None:
    for name in ("qwen2-exp:7b", "no-such-model"):
        result = _invoke(store_a, "bundle", "export", name, "-o", str(tmp_path / "x.tar"))
        assert result.exit_code == 1, result.output
        assert f"{name} is not in the store" in _one_line_error(result)
    assert not list(tmp_path.iterdir())


def test_export_to_an_unwritable_place_leaves_no_file(store_a: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    for target in (tmp_path / "missing" / "x.tar", blocker / "x.tar"):
        result = _invoke(store_a, "bundle", "export", REFINE, "-o", str(target))
        assert result.exit_code == 1, result.output
        assert "-o" in _one_line_error(result)
    assert _invoke(store_a, "bundle", "export", REFINE, "-o", str(tmp_path)).exit_code == 2  # a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_export_of_a_damaged_store_file_leaves_no_partial_bundle(store_a: Path, tmp_path: Path) -> None:
    home = tmp_path / "store"
    shutil.copytree(store_a, home)
    path = _stored_gguf(home)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    result = _invoke(home, "bundle", "export", REFINE, "-o", str(out / "models.tar"))
    assert result.exit_code == 1, result.output
    line = _one_line_error(result)
    assert "sha256" in line and "no bundle was written" in line
    assert not list(out.iterdir())


def test_export_quant_exports_only_that_quant(store_a: Path, tmp_path: Path) -> None:
    """README: "`--quant` limits the export to one quantization (default: every stored one)"."""
    home = tmp_path / "store"
    # Store A's GGUF is only read: link it instead of copying 40 MB; manifest and lock are copies.
    shutil.copytree(store_a, home, copy_function=lambda src, dst: (os.link if src.endswith(".gguf") else shutil.copy2)(src, dst))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALAUG_HOME", str(home))
        [q8] = store.list_entries()
        f16 = store.pull(q8.source.path, quant="F16")  # the same snapshot folder, a second quant
        assert sorted(e.quant for e in store.list_entries()) == ["F16", "Q8_0"]
    assert f16.path == home / "models" / FOLDER / "F16.gguf"

    def exported(*extra: str) -> tuple[list[str], dict]:
        out = tmp_path / f"export{'-'.join(extra)}.tar"
        result = _invoke(home, "bundle", "export", REFINE, *extra, "-o", str(out))
        assert result.exit_code == 0, result.output
        with tarfile.open(out) as tar:
            names = [m.name for m in tar.getmembers()]
            data = json.loads(tar.extractfile(BUNDLE_MANIFEST).read())  # type: ignore[union-attr]
            for name in names[1:]:
                quant = Path(name).stem
                assert tar.extractfile(name).read() == (home / "models" / FOLDER / f"{quant}.gguf").read_bytes()  # type: ignore[union-attr]
        [model] = data["models"]
        return names, model["files"]

    names, files = exported("--quant", "f16")
    assert names == [BUNDLE_MANIFEST, f"models/{FOLDER}/F16.gguf"]
    assert list(files) == ["F16"] and files["F16"]["sha256"] == hashlib.sha256(f16.path.read_bytes()).hexdigest()

    names, files = exported("-q", "Q8_0")
    assert names == [BUNDLE_MANIFEST, MEMBER] and list(files) == ["Q8_0"]

    names, files = exported()  # no --quant: every stored one
    assert sorted(names[1:]) == [f"models/{FOLDER}/F16.gguf", MEMBER] and sorted(files) == ["F16", "Q8_0"]

    missing = _invoke(home, "bundle", "export", REFINE, "--quant", "Q4_K_M", "-o", str(tmp_path / "none.tar"))
    assert missing.exit_code == 1 and "not in the store" in _one_line_error(missing)
    assert not (tmp_path / "none.tar").exists()


# -- Ollama Modelfiles ------------------------------------------------------------------------------


def _parse_modelfile(text: str) -> dict[str, list[str]]:
    """Instruction -> values, as Ollama reads them: triple-quoted strings verbatim, comments skipped."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r'^(?!#)([A-Z]+) (?:"""(.*?)"""|(.*?))$', text, re.M | re.S):
        out.setdefault(m.group(1), []).append(m.group(2) if m.group(2) is not None else m.group(3))
    return out


def ollama_prompt(template: str, system: str, prompt: str) -> str:
    """What Ollama sends for one user message: the template up to ``{{ .Response }}`` (it cuts there for the
    turn being generated), with ``{{ if .System }}…{{ end }}`` kept only when there is a system prompt and
    the Go fields substituted."""
    head = template.split("{{ .Response }}")[0]
    head = re.sub(r"\{\{ if \.System \}\}(.*?)\{\{ end \}\}", lambda m: m.group(1) if system else "", head, flags=re.DOTALL)
    assert set(re.findall(r"\{\{.*?\}\}", head)) <= {"{{ .System }}", "{{ .Prompt }}"}
    return head.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt)


SEEDS = [Pair("Name three primary colors.", "Red, yellow and blue."), Pair("中国的首都是哪里？", "北京。")]

# Typed out, not derived from localaug/prompts.py: the Qwen2-Instruct ChatML turns (system, user,
# assistant, each closed by <|im_end|> and a newline) with Ollama's Go-template fields in them, and
# the Qwen2 default system prompt.
QWEN2_OLLAMA_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
QWEN2_SYSTEM = "You are a helpful assistant."
_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
_TAIL = "<|im_end|>\n<|im_start|>assistant\n"
# task -> [(payload, what the user types into Ollama, the prompt the model was trained on)], typed out.
PAIRS_MESSAGE = ("### Instruction\nName three primary colors.\n\n### Response\nRed, yellow and blue.\n\n"
                 "### Instruction\n中国的首都是哪里？\n\n### Response\n北京。")
EXPECTED_PROMPTS: dict[str, list[tuple[object, str, str]]] = {
    "instruction": [
        ("Create a travel guide for Hangzhou.", "Create a travel guide for Hangzhou.",
         _HEAD + "Create a travel guide for Hangzhou." + _TAIL),
        ("写一首关于秋天的诗。\n两节。", "写一首关于秋天的诗。\n两节。", _HEAD + "写一首关于秋天的诗。\n两节。" + _TAIL),
    ],
    "pairs": [(SEEDS, PAIRS_MESSAGE, _HEAD + PAIRS_MESSAGE + _TAIL)],
}


@pytest.mark.parametrize("spec", registry.family(), ids=lambda s: s.name)
def test_modelfile_template_is_localaugs_prompt_byte_for_byte(spec, tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    parsed = _parse_modelfile(modelfile.render(gguf, spec, "Q4_K_M"))
    [template], [system] = parsed["TEMPLATE"], parsed["SYSTEM"]
    assert template == QWEN2_OLLAMA_TEMPLATE
    assert system == QWEN2_SYSTEM
    style = PromptStyle(spec.prompt_format, stop=spec.stop, family_name=spec.name)
    for payload, message, prompt in EXPECTED_PROMPTS["pairs" if spec.task == "pairs" else "instruction"]:
        assert ollama_prompt(template, system, message) == prompt  # what Ollama sends
        assert build_prompt(style, spec.task, payload) == prompt  # what localaug sends
    params = parsed["PARAMETER"]
    assert [json.loads(p.removeprefix("stop ")) for p in params if p.startswith("stop ")] == ["<|im_end|>", "<|endoftext|>"]
    # the vendor defaults (README); a responder's from Qwen2-Instruct's generation_config.json
    defaults = (("temperature 0.7", "top_p 0.8", "top_k 20") if spec.task == "respond" else
                ("temperature 0.5", "top_p 0.95", "top_k 50"))
    for line in (*defaults, "num_predict 2048"):
        assert line in params
    assert parsed["FROM"] == [str(gguf.resolve())] and parsed["LICENSE"] == ["apache-2.0"]


def test_later_turns_get_no_empty_system_block() -> None:
    """Ollama fills .System on the first turn only; the TEMPLATE must then leave the block out."""
    template = modelfile.chatml_template()
    assert ollama_prompt(template, "", "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert ollama_prompt(template, "Be brief.", "Hi").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_every_family_format_has_a_template() -> None:
    assert {s.prompt_format for s in registry.family()} <= set(modelfile.FORMATS)


def test_export_modelfile_cli_for_a_stored_model(store_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "Modelfile"
    result = _invoke(store_a, "export-modelfile", REFINE, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"ollama create {REFINE} -f {out}" in result.stderr
    parsed = _parse_modelfile(out.read_text(encoding="utf-8"))
    [path] = parsed["FROM"]
    assert Path(path) == _stored_gguf(store_a) and Path(path).is_file()
    assert parsed["TEMPLATE"] == [QWEN2_OLLAMA_TEMPLATE] and parsed["SYSTEM"] == [QWEN2_SYSTEM]
    _, message, prompt = EXPECTED_PROMPTS["instruction"][0]
    assert ollama_prompt(parsed["TEMPLATE"][0], parsed["SYSTEM"][0], message) == prompt
    printed = _invoke(store_a, "export-modelfile", REFINE, "-q", "q8_0")  # no -o: stdout
    assert printed.exit_code == 0 and printed.stdout == out.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile"]


def test_export_modelfile_refuses_teacher_models_and_unstored_ones(store_a: Path, converted, tmp_path: Path) -> None:
    teacher = _invoke(store_a, "export-modelfile", str(converted("tied", "Q8_0")), "-o", str(tmp_path / "Modelfile"))
    assert teacher.exit_code == 2 and "teacher mode" in _one_line_error(teacher)
    missing = _invoke(store_a, "export-modelfile", "qwen2-exp:7b")
    assert missing.exit_code == 1 and "not in the store" in _one_line_error(missing)
    assert not list(tmp_path.iterdir())


# -- archives that would fill the disk or exhaust the parser ---------------------------------------


def test_a_sparse_member_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """A few KB of tar that declares a 1 GiB member (GNU tar --sparse): refused by its header."""
    folder = tmp_path / "src"
    (folder / "models" / FOLDER).mkdir(parents=True)
    big = folder / "models" / FOLDER / "Q8_0.gguf"
    with open(big, "wb") as f:  # GGUF magic, then a hole
        f.write(b"GGUF")
        f.truncate(1 << 30)
    manifest = {"format": 1, "models": [{"name": REFINE, "family": REFINE, "files": {"Q8_0": {
        "file": "Q8_0.gguf", "sha256": hashlib.sha256(b"x").hexdigest(), "size": 1 << 30, "quant": "Q8_0"}}}]}
    (folder / BUNDLE_MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=pax", "-cf", str(archive), "-C", str(folder), BUNDLE_MANIFEST,
                    f"models/{FOLDER}/Q8_0.gguf"], check=True)
    assert archive.stat().st_size < 1 << 20  # the archive is small; what it declares is not
    with tarfile.open(archive) as tar:
        assert tar.getmember(f"models/{FOLDER}/Q8_0.gguf").issparse()
    home = tmp_path / "home"
    _seed_store(home)
    before = _listing(home)
    result = _invoke(home, "bundle", "import", str(archive))
    assert result.exit_code == 1 and "a sparse file" in _one_line_error(result)
    assert _listing(home) == before


def test_compressed_and_deeply_nested_bundles_are_one_line_errors(bundle: Path, tmp_path: Path) -> None:
    import gzip

    packed = tmp_path / "models.tar.gz"
    packed.write_bytes(gzip.compress(bundle.read_bytes(), compresslevel=1))
    home = tmp_path / "home"
    _seed_store(home)
    before = _listing(home)
    result = _invoke(home, "bundle", "import", str(packed))
    assert result.exit_code == 1 and "gzip-compressed" in _one_line_error(result)
    deep = tmp_path / "deep.tar"
    with tarfile.open(deep, "w", format=tarfile.PAX_FORMAT) as tar:
        blob = ("[" * 100_000 + "]" * 100_000).encode()
        info = _tarinfo(BUNDLE_MANIFEST)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    result = _invoke(home, "bundle", "import", str(deep))
    assert result.exit_code == 1 and "nested too deep" in _one_line_error(result)
    assert _listing(home) == before


def test_an_import_that_cannot_fit_is_refused_up_front(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from collections import namedtuple

    import localaug.store.bundle.importing as bundle_module

    home = tmp_path / "home"
    _seed_store(home)
    before = _listing(home)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(bundle_module.shutil, "disk_usage", lambda p: usage(1 << 40, 1 << 40, 10 << 20))  # 10 MiB free
    result = _invoke(home, "bundle", "import", str(bundle))
    assert result.exit_code == 1 and "free space" in _one_line_error(result)
    assert _listing(home) == before
