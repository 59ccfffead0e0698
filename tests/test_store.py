"""The local model store and `localaug pull`: offline pulls from a Hugging Face cache built here,
local checkpoint folders, provenance, sha256 manifests, no-op re-pulls, tamper detection.

huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported, so pulls through its cache
run the real CLI in a child process with the environment set, as a user would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from typer.testing import CliRunner

from localaug.cli.main import app
from localaug.core.errors import GGUFError, ModelNotFoundError, StoreError, UsageError
from localaug.store import local as store

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REFINE_REPO = "alibaba-pai/Qwen2-1.5B-Instruct-Refine"
runner = CliRunner()


def _add_repo(hub: Path, repo: str, checkpoint: Path, commit: str = COMMIT) -> Path:
    """Lay ``checkpoint`` out as huggingface_hub caches a repo: blobs, a snapshot of links, refs/main."""
    base = hub / ("models--" + repo.replace("/", "--"))
    blobs, snap = base / "blobs", base / "snapshots" / commit
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(checkpoint.iterdir()):
        if f.name == "generation_config.json":  # a plain file in the snapshot: huggingface_hub allows both
            (snap / f.name).write_bytes(f.read_bytes())
            continue
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        os.link(f, blob)  # a hard link: the fixture's 78 MB of weights are not copied
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (snap / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n", encoding="utf-8")
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit, encoding="utf-8")
    return snap


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory, qwen2_tied: Path) -> Path:
    home = tmp_path_factory.mktemp("hf")
    for repo in ("acme/tiny-qwen2", REFINE_REPO):
        _add_repo(home / "hub", repo, qwen2_tied)
    return home


def _cli(args: list[str], localaug_home: Path, hf_home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    # An endpoint that refuses at once: should anything try the network, it fails loudly, never reaches out.
    env.update({"LOCALAUG_HOME": str(localaug_home), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
                "HF_ENDPOINT": "http://127.0.0.1:9", "COLUMNS": "200", **extra})
    env = {k: v for k, v in env.items() if v != ""}
    return subprocess.run([sys.executable, "-m", "localaug.cli", *args], env=env, capture_output=True, text=True, timeout=300)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _gguf_strings(path: Path, *keys: str) -> dict[str, str]:
    reader = gguf.GGUFReader(path)
    return {k: bytes(reader.fields[k].parts[reader.fields[k].data[0]]).decode() for k in keys}


def test_pull_repo_from_offline_hf_cache_then_noop(tmp_path: Path, hf_home: Path) -> None:
    home = tmp_path / "la"
    first = _cli(["pull", "acme/tiny-qwen2", "--quant", "Q8_0"], home, hf_home)
    assert first.returncode == 0, first.stderr
    folder = home / "models" / "acme--tiny-qwen2"
    gguf_path = folder / "Q8_0.gguf"
    assert gguf_path.is_file() and "pulled acme/tiny-qwen2 Q8_0" in first.stdout
    record = _manifest(folder)["files"]["Q8_0"]
    assert record["sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert record["size"] == gguf_path.stat().st_size
    assert record["source"] == {"repo": "acme/tiny-qwen2", "revision": "main", "commit": COMMIT}
    assert record["license"] == "apache-2.0" and record["family"] is None
    assert _gguf_strings(gguf_path, "localaug.source.repo", "localaug.source.revision") == {
        "localaug.source.repo": "acme/tiny-qwen2", "localaug.source.revision": COMMIT,
    }
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "Q8_0.gguf", "manifest.json"]  # no temp debris

    before = gguf_path.stat()
    second = _cli(["pull", "acme/tiny-qwen2", "-q", "Q8_0"], home, hf_home)
    assert second.returncode == 0, second.stderr
    assert "already in the store" in second.stdout
    after = gguf_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_pull_family_name_offline_uses_its_repo(tmp_path: Path, hf_home: Path) -> None:
    home = tmp_path / "la"
    result = _cli(["pull", "qwen2-refine:1.5b", "-q", "Q8_0"], home, hf_home)
    assert result.returncode == 0, result.stderr
    folder = home / "models" / "qwen2-refine_1.5b"
    record = _manifest(folder)["files"]["Q8_0"]
    assert record["source"]["repo"] == REFINE_REPO and record["source"]["commit"] == COMMIT
    assert record["family"] == "qwen2-refine:1.5b" and record["license"] == "apache-2.0"
    assert _gguf_strings(folder / "Q8_0.gguf", "localaug.source.repo")["localaug.source.repo"] == REFINE_REPO

    listing = _cli(["models", "--json"], home, hf_home)
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    refine = next(m for m in data["family"] if m["name"] == "qwen2-refine:1.5b")
    assert refine["pulled"] == ["Q8_0"]
    assert all(m["pulled"] == [] for m in data["family"] if m["name"] != "qwen2-refine:1.5b")
    [entry] = data["store"]
    assert entry["name"] == "qwen2-refine:1.5b" and entry["sha256"] == record["sha256"]


@pytest.mark.parametrize("model", ["acme/absent", "qwen2-exp:7b"])
def test_offline_missing_model_says_how_to_bring_it_in(tmp_path: Path, hf_home: Path, model: str) -> None:
    home = tmp_path / "la"
    result = _cli(["pull", model], home, hf_home)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "HF_HUB_OFFLINE=1" in lines[0] and f"localaug pull {model}" in lines[0] and "local checkpoint folder" in lines[0]
    assert not any(p.is_file() for p in home.rglob("*"))


def test_unreachable_hub_is_one_line_naming_hf_endpoint(tmp_path: Path, hf_home: Path) -> None:
    result = _cli(["pull", "acme/absent"], tmp_path / "la", hf_home, HF_HUB_OFFLINE="")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0], result.stderr
    assert "HF_ENDPOINT" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "la"
    monkeypatch.setenv("LOCALAUG_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_pull_local_folder_list_tamper_and_repair(local_store: Path, qwen2_tied: Path) -> None:
    result = runner.invoke(app, ["pull", str(qwen2_tied), "--quant", "Q8_0"])
    assert result.exit_code == 0, result.output
    path = local_store / "models" / "tiny-qwen2-tied" / "Q8_0.gguf"
    assert path.is_file()

    listing = runner.invoke(app, ["models", "--json"])
    assert listing.exit_code == 0, listing.output
    [entry] = json.loads(listing.output)["store"]
    assert (entry["name"], entry["quant"], entry["path"]) == ("tiny-qwen2-tied", "Q8_0", str(path))
    assert entry["source"]["path"] == str(qwen2_tied.resolve())
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    assert store.resolve("tiny-qwen2-tied", verify=True) == path
    assert store.resolve(str(qwen2_tied)) == path  # a stored folder is not converted again

    data = bytearray(path.read_bytes())
    data[-100:] = bytes(b ^ 0xFF for b in data[-100:])  # flip bytes, same size
    path.write_bytes(bytes(data))
    assert store.resolve("tiny-qwen2-tied") == path  # the cheap check is the size
    with pytest.raises(StoreError, match="sha256.*localaug pull"):
        store.resolve("tiny-qwen2-tied", verify=True)
    with pytest.raises(StoreError, match="sha256"):
        store.verify()
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(StoreError, match="truncated"):
        store.resolve("tiny-qwen2-tied", "Q8_0")

    repaired = runner.invoke(app, ["pull", str(qwen2_tied), "--quant", "Q8_0"])
    assert repaired.exit_code == 0 and "pulled" in repaired.output
    assert [e.name for e in store.verify("tiny-qwen2-tied")] == ["tiny-qwen2-tied"]
    again = store.pull(str(qwen2_tied), quant="Q8_0")
    assert again.reused and again.path == path

    assert [e.quant for e in store.remove("tiny-qwen2-tied")] == ["Q8_0"]
    assert store.list_entries() == [] and not path.parent.exists()


def test_resolve_converts_a_checkpoint_folder_on_first_use(local_store: Path, qwen2_tied: Path) -> None:
    path = store.resolve(str(qwen2_tied), "Q8_0")
    assert path == local_store / "models" / "tiny-qwen2-tied" / "Q8_0.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    mtime = path.stat().st_mtime_ns
    assert store.resolve(str(qwen2_tied)) == path and path.stat().st_mtime_ns == mtime


def test_resolve_passes_gguf_files_through_and_rejects_others(local_store: Path, tmp_path: Path) -> None:
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))
    assert store.resolve(str(fake)) == fake
    fake.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(GGUFError, match="not a GGUF"):
        store.resolve(str(fake))
    with pytest.raises(UsageError):
        store.pull(str(fake))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        store.resolve(str(tmp_path / "missing-folder"))
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        store.resolve("no-such-model")
    assert not (local_store / "models").exists()


def test_safe_names() -> None:
    assert store.safe_name("alibaba-pai/Qwen2-7B-Instruct-Exp") == "alibaba-pai--Qwen2-7B-Instruct-Exp"
    assert store.safe_name("qwen2-refine:1.5b") == "qwen2-refine_1.5b"


def test_pull_of_a_folder_with_only_pickle_weights_is_refused_unloaded(local_store: Path, qwen2_tied: Path,
                                                                       tmp_path: Path) -> None:
    """README: "Pickle weights (`*.bin`) are refused, never loaded" -- through `localaug pull` too."""
    import pickle

    ckpt = tmp_path / "pickled-qwen2"
    ckpt.mkdir()
    for f in qwen2_tied.iterdir():
        if f.suffix != ".safetensors":
            os.link(f, ckpt / f.name)
    sentinel = tmp_path / "unpickled"

    class Payload:  # unpickling this creates `sentinel`: proof that the file was loaded
        def __reduce__(self):
            return (os.mkdir, (str(sentinel),))

    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    result = runner.invoke(app, ["pull", str(ckpt), "--quant", "Q8_0"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "pickle" in line and "safetensors" in line, line
    assert not sentinel.exists(), "the pickle file was loaded"
    assert not any(p.suffix == ".gguf" or p.name.endswith(".part") for p in local_store.rglob("*"))
    assert store.list_entries() == []


# What Hugging Face repos hold besides the weights conversion reads (file names as on the hub).
REPO_FILES = [
    "config.json", "generation_config.json", "model.safetensors", "model-00001-of-00004.safetensors",
    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "README.md", "LICENSE", ".gitattributes", "pytorch_model.bin", "pytorch_model-00001-of-00002.bin",
    "pytorch_model.bin.index.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth",
    "consolidated.00.pth", "original/consolidated.00.pth", "checkpoint-500/pytorch_model.bin",
    "onnx/model.onnx", "flax_model.msgpack", "tf_model.h5",
]


def test_hub_allow_list_fetches_only_what_conversion_reads() -> None:
    """README: only config, *.safetensors, tokenizer files and the model card are fetched, never *.bin/*.pt.
    Checked with fnmatch (the matching huggingface_hub documents for allow_patterns) and with the filter
    snapshot_download itself applies."""
    from fnmatch import fnmatch

    from huggingface_hub.utils import filter_repo_objects

    from localaug.store.hub import ALLOW_PATTERNS

    by_fnmatch = [f for f in REPO_FILES if any(fnmatch(f, pat) for pat in ALLOW_PATTERNS)]
    by_hub = list(filter_repo_objects(REPO_FILES, allow_patterns=ALLOW_PATTERNS))
    assert by_fnmatch == by_hub == [
        "config.json", "generation_config.json", "model.safetensors", "model-00001-of-00004.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
        "README.md",
    ]
    assert not [f for f in by_hub if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]


def test_store_follows_xdg_cache_home_then_list_and_rm(tmp_path: Path, hf_home: Path, qwen2_tied: Path) -> None:
    cache = tmp_path / "xdg-cache"
    env = {"XDG_CACHE_HOME": str(cache), "LOCALAUG_HOME": ""}  # no LOCALAUG_HOME: the XDG cache decides
    for quant in ("Q8_0", "F16"):
        assert _cli(["pull", str(qwen2_tied), "--quant", quant], tmp_path / "unused", hf_home, **env).returncode == 0
    folder = cache / "localaug" / "models" / "tiny-qwen2-tied"
    assert sorted(p.name for p in folder.glob("*.gguf")) == ["F16.gguf", "Q8_0.gguf"]
    listed = _cli(["list", "--json"], tmp_path / "unused", hf_home, **env)
    assert listed.returncode == 0
    assert sorted(e["quant"] for e in json.loads(listed.stdout)["store"]) == ["F16", "Q8_0"]
    removed = _cli(["rm", "tiny-qwen2-tied", "--quant", "q8_0"], tmp_path / "unused", hf_home, **env)
    assert removed.returncode == 0 and "removed tiny-qwen2-tied Q8_0" in removed.stdout, removed.stderr
    assert sorted(p.name for p in folder.glob("*.gguf")) == ["F16.gguf"] and list(_manifest(folder)["files"]) == ["F16"]
    again = _cli(["rm", "tiny-qwen2-tied", "--quant", "Q8_0"], tmp_path / "unused", hf_home, **env)
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "not in the store" in again.stderr
    assert _cli(["rm", "tiny-qwen2-tied"], tmp_path / "unused", hf_home, **env).returncode == 0
    assert not folder.exists()  # the last file gone: the folder too
