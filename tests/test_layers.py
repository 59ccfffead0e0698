"""The house stays a house: every import inside ``localaug`` (at module level or inside a function)
goes down the layers of docs/architecture.md, peers do not import each other, and the heavy or
optional libraries stay in their rooms (Ray in jobs/on_ray, llama.cpp in the runtime, PyTorch nowhere).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "localaug"

# Layer of each top-level part of the package: a part may import its own layer and those below.
LAYERS = {
    "_version": 0, "core": 0,
    "convert": 1, "models": 1,
    "family": 2,
    "runtime": 3, "store": 3,
    "augment": 4,
    "jobs": 5, "serve": 5, "report": 5,
    "api": 6, "ray": 6,
    "cli": 7, "ui": 7,
}
# Parts of one layer that must not import each other.
PEERS_APART = {("jobs", "serve"), ("serve", "jobs"), ("runtime", "store"), ("store", "runtime"),
               ("report", "serve"), ("serve", "report"), ("jobs", "report")}
# Third-party packages and the only parts that may import them.
# (llama.cpp's quantizer runs in a child process of the conversion step.)
CONFINED = {"ray": {"jobs/on_ray.py"}, "llama_cpp": {"runtime", "convert/quantize.py"}, "torch": set(), "transformers": set(),
            "matplotlib": {"report/figures.py"}, "sklearn": {"report/build.py"}}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, wherever it is (functions and try blocks too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "localaug":  # from localaug import x: x is the part
                found += [(node.lineno, f"localaug.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use absolute localaug.* imports")
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_part_has_a_layer() -> None:
    parts = {part_of(p) for p in modules()}
    assert parts <= set(LAYERS), parts - set(LAYERS)
    for folder in PACKAGE.iterdir():
        if folder.is_dir() and (folder / "__init__.py").exists():
            doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
            assert doc, f"{folder.name}/__init__.py says in a docstring what the subpackage holds"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path: Path) -> None:
    me = part_of(path)
    rel = str(path.relative_to(PACKAGE))
    for line, module in imports(path):
        top, _, rest = module.partition(".")
        if top == "localaug":
            if not rest or rest == "__version__":
                continue
            other = rest.split(".")[0]
            assert other in LAYERS, f"{rel}:{line} imports {module}, which has no layer"
            if other == me:
                continue
            assert LAYERS[other] <= LAYERS[me], f"{rel}:{line}: {me} (layer {LAYERS[me]}) imports {module} (layer {LAYERS[other]})"
            assert (me, other) not in PEERS_APART, f"{rel}:{line}: {me} and {other} are peers that stay apart"
        elif top in CONFINED:
            allowed = CONFINED[top]
            assert rel in allowed or me in allowed, f"{rel}:{line} imports {module}; only {sorted(allowed) or 'tests'} may"


def test_the_layer_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from localaug.cli import main\n    import ray\n", encoding="utf-8")
    assert imports(source) == [(2, "localaug.cli"), (3, "ray")]


def test_the_public_api_imports_from_the_top() -> None:
    import localaug
    from localaug import Augmenter, Pair, api, run_job

    assert Augmenter is api.Augmenter and Pair is api.Pair and run_job is api.run_job
    assert set(api.__all__) >= {"Augmenter", "Pair", "run_job", "merge_outputs", "doctor"}
    assert all(hasattr(api, name) for name in api.__all__)
    assert all(hasattr(localaug, name) for name in localaug.__all__)
