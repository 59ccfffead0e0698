"""The house stays a house: every import inside ``localaug`` (at module level or inside a function,
``from localaug import x`` of the package root, ``importlib.import_module("localaug....")``) goes down
the layers of docs/architecture.md, peers do not import each other, no module imports one that
imports it back (directly or around a loop, inside a subpackage too), and the heavy or optional
libraries stay in their rooms (Ray in jobs/on_ray, llama.cpp in the runtime, PyTorch nowhere).

The checker works on any tree (``arrows``, ``bad_arrows``, ``cycles``); the last tests feed it a
made-up package with an upward import and a cycle and see it fail.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "localaug"
ROOT = "localaug"

# Layer of each top-level part of the package: a part may import its own layer and those below.
# "__init__" is the package root, which serves the public API (from localaug import Augmenter).
LAYERS = {
    "_version": 0, "core": 0,
    "convert": 1, "models": 1,
    "family": 2,
    "runtime": 3, "store": 3,
    "augment": 4,
    "jobs": 5, "serve": 5, "report": 5,
    "api": 6, "ray": 6, "__init__": 6,
    "cli": 7,
}
# Parts of one layer that must not import each other.
PEERS_APART = {("jobs", "serve"), ("serve", "jobs"), ("runtime", "store"), ("store", "runtime"),
               ("report", "serve"), ("serve", "report"), ("jobs", "report")}
# Third-party packages and the only parts that may import them.
# (llama.cpp's quantizer runs in a child process of the conversion step.)
CONFINED = {"ray": {"jobs/on_ray.py"}, "llama_cpp": {"runtime", "convert/quantize.py"}, "torch": set(), "transformers": set(),
            "matplotlib": {"report/figures.py"}, "sklearn": {"report/build.py"}}
# Rendering (Rich) belongs to the command line; the rest of the package returns values. Inside the
# command line, the rendering room (cli/render) draws what it is given: it never imports the
# commands, nor Typer.
RICH_ONLY_IN = {"cli"}
RENDER = f"{ROOT}.cli.render"


@dataclass(frozen=True)
class Arrow:
    """One import: ``source`` (a module of the package, dotted) names ``target`` at ``line``; a
    target inside the package is resolved to the module that defines what is imported."""

    source: str
    line: int
    target: str

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def module_files(package: Path) -> dict[str, Path]:
    """Every module of the package (the root ``__init__`` too), by dotted name."""
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _root_names(package: Path) -> dict[str, str]:
    """Names the package root defines by importing them at module level (``__version__``); every
    other name it exports is the public API, loaded from ``api`` on first use."""
    tree = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    return {alias.asname or alias.name: node.module for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}


def _resolve(name: str, known: set[str]) -> str:
    """The module of the package a dotted name falls in (its longest known prefix), else the name."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return name


def _import_module_call(node: ast.AST) -> str | None:
    """The module an ``importlib.import_module("…")`` (or ``import_module("…")``) call names."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module")
    return node.args[0].value if named else None


def arrows(path: Path, package: Path, known: set[str] | None = None) -> list[Arrow]:
    """Every import in the file, wherever it is (functions and try blocks too)."""
    known = known if known is not None else set(module_files(package))
    root = package.name
    source = module_name(path, package)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[Arrow] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Arrow(source, node.lineno, _resolve(alias.name, known)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use absolute {root}.* imports")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                whole = f"{node.module}.{alias.name}"
                if whole in known:  # from localaug.jobs import dataio: the module itself
                    target = whole
                elif node.module == root:  # from localaug import __version__ / Augmenter
                    target = _root_names(package).get(alias.name, f"{root}.api")
                else:
                    target = _resolve(node.module, known)
                found.append(Arrow(source, node.lineno, target))
        elif (named := _import_module_call(node)) is not None:
            found.append(Arrow(source, node.lineno, _resolve(named, known)))
    return sorted(found, key=lambda a: a.line)  # ast.walk goes breadth first: in file order instead


def part_of(module: str) -> str:
    """The top-level part of the package a module belongs to (``localaug.jobs.run`` -> jobs)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rel_path(module: str) -> str:
    """``localaug.jobs.on_ray`` -> ``jobs/on_ray.py`` (as CONFINED names files)."""
    return "/".join(module.split(".")[1:]) + ".py"


def bad_arrows(found: list[Arrow], root: str = ROOT) -> list[str]:
    """The arrows that break the rules: up a layer, between peers kept apart, to a confined library
    outside its room, to Rich outside the command line."""
    problems = []
    for a in found:
        me = part_of(a.source)
        top = a.target.split(".")[0]
        if a.source.startswith(RENDER) and (a.target.startswith(f"{root}.cli.") or a.target == f"{root}.cli") \
                and not a.target.startswith(RENDER):
            problems.append(f"{a.where()}: rendering imports the command line ({a.target})")
        if a.source.startswith(RENDER) and top == "typer":
            problems.append(f"{a.where()}: rendering imports {a.target}; only the commands use Typer")
        if top == root:
            other = part_of(a.target)
            if other not in LAYERS:
                problems.append(f"{a.where()} imports {a.target}, which has no layer")
            elif other != me and LAYERS[other] > LAYERS[me]:
                problems.append(f"{a.where()}: {me} (layer {LAYERS[me]}) imports {a.target} (layer {LAYERS[other]})")
            elif (me, other) in PEERS_APART:
                problems.append(f"{a.where()}: {me} and {other} are peers that stay apart ({a.target})")
        elif top in CONFINED:
            allowed = CONFINED[top]
            if rel_path(a.source) not in allowed and me not in allowed:
                problems.append(f"{a.where()} imports {a.target}; only {sorted(allowed) or 'tests'} may")
        elif top == "rich" and me not in RICH_ONLY_IN:
            problems.append(f"{a.where()} imports {a.target}; rendering lives in {sorted(RICH_ONLY_IN)}")
    return problems


def cycles(found: list[Arrow]) -> list[list[str]]:
    """The import loops among the package's modules: each strongly connected group of two or more
    modules (Tarjan), as one loop through it."""
    graph: dict[str, set[str]] = {}
    for a in found:
        graph.setdefault(a.source, set())
        if a.target != a.source and a.target.split(".")[0] == a.source.split(".")[0]:
            graph[a.source].add(a.target)
            graph.setdefault(a.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(_loop(graph, set(group)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _loop(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """One loop through a strongly connected group: start -> ... -> start."""
    start = min(group)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in group)
        back = start in nxt
        if back and len(path) > 1:
            return [*path, start]
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return [*path, start] if back else path
        path.append(fresh[0])
        seen.add(fresh[0])


def all_arrows(package: Path) -> list[Arrow]:
    files = module_files(package)
    known = set(files)
    return [a for path in files.values() for a in arrows(path, package, known)]


# --------------------------------------------------------------------------- the package


def test_every_part_has_a_layer() -> None:
    parts = {part_of(m) for m in module_files(PACKAGE)}
    assert parts <= set(LAYERS), parts - set(LAYERS)
    for folder in PACKAGE.rglob("*"):
        if folder.is_dir() and (folder / "__init__.py").exists():
            doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
            assert doc, f"{folder.relative_to(PACKAGE)}/__init__.py says in a docstring what the subpackage holds"


@pytest.mark.parametrize("path", sorted(module_files(PACKAGE).values()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path: Path) -> None:
    assert bad_arrows(arrows(path, PACKAGE)) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(all_arrows(PACKAGE)) == []


def test_the_public_api_imports_from_the_top() -> None:
    import localaug
    from localaug import Augmenter, Pair, api, run_job

    assert Augmenter is api.Augmenter and Pair is api.Pair and run_job is api.run_job
    assert set(api.__all__) >= {"Augmenter", "Pair", "run_job", "merge_outputs", "doctor"}
    assert all(hasattr(api, name) for name in api.__all__)
    assert all(hasattr(localaug, name) for name in localaug.__all__)


# --------------------------------------------------------------------------- the checker itself


def test_the_checker_sees_imports_inside_functions_the_root_and_importlib(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {
        "__init__.py": '"""root"""\nfrom localaug._version import __version__\n',
        "_version.py": "__version__ = '0'\n",
        "api.py": "",
        "jobs/__init__.py": '"""jobs"""\n',
        "jobs/run.py": "",
        "cli/__init__.py": '"""cli"""\n',
        "cli/main.py": "",
        "core/__init__.py": '"""core"""\n',
        "core/x.py": ("import importlib\n"
                      "def f():\n    from localaug.cli import main\n    import ray\n"
                      "from localaug import __version__, Augmenter\n"
                      "from localaug.jobs import run, DEDUP\n"
                      "importlib.import_module('localaug.jobs.run.deep')\n"),
    })
    found = arrows(pkg / "core" / "x.py", pkg)
    assert [(a.line, a.target) for a in found] == [
        (1, "importlib"), (3, "localaug.cli.main"), (4, "ray"), (5, "localaug._version"), (5, "localaug.api"),
        (6, "localaug.jobs.run"), (6, "localaug.jobs"), (7, "localaug.jobs.run")]


def test_the_checker_fails_an_upward_arrow_and_a_loop(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {
        "__init__.py": '"""root"""\n',
        "api.py": "",
        "core/__init__.py": '"""core"""\n',
        "core/files.py": "def f():\n    from localaug.jobs import run\n",  # up from layer 0 to 5, inside a function
        "core/errors.py": "from localaug import Augmenter\n",  # the public API, from the root
        "jobs/__init__.py": '"""jobs"""\n',
        "jobs/run.py": "from localaug.jobs import chain\n",
        "jobs/chain.py": "def go():\n    import importlib\n    importlib.import_module('localaug.jobs.run')\n",
        "jobs/merge.py": "import localaug.jobs.run\n",  # into the loop, not part of it
        "serve/__init__.py": '"""serve"""\n',
        "serve/app.py": "from localaug.jobs.merge import x\nfrom rich.console import Console\n",
        "cli/__init__.py": '"""cli"""\n',
        "cli/shell.py": "",
        "cli/render/__init__.py": '"""render"""\n',
        "cli/render/jobs.py": "from localaug.cli import shell\nimport typer\nfrom localaug.cli.render import plain\n",
    })
    found = all_arrows(pkg)
    assert bad_arrows(found) == [
        "localaug.cli.render.jobs:1: rendering imports the command line (localaug.cli.shell)",
        "localaug.cli.render.jobs:2: rendering imports typer; only the commands use Typer",
        "localaug.core.errors:1: core (layer 0) imports localaug.api (layer 6)",
        "localaug.core.files:2: core (layer 0) imports localaug.jobs.run (layer 5)",
        "localaug.serve.app:1: serve and jobs are peers that stay apart (localaug.jobs.merge)",
        "localaug.serve.app:2 imports rich.console; rendering lives in ['cli']",
    ]
    assert cycles(found) == [["localaug.jobs.chain", "localaug.jobs.run", "localaug.jobs.chain"]]


def test_the_checker_finds_a_longer_loop_across_parts(tmp_path: Path) -> None:
    pkg = _tree(tmp_path, {
        "__init__.py": '"""root"""\n',
        "cli/__init__.py": '"""cli"""\n',
        "cli/main.py": "from localaug.cli import models\n",
        "cli/models.py": "from localaug.cli.shell import x\n",
        "cli/shell.py": "def f():\n    from localaug.cli.main import app\n",
    })
    assert cycles(all_arrows(pkg)) == [["localaug.cli.main", "localaug.cli.models", "localaug.cli.shell", "localaug.cli.main"]]


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / ROOT
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text, encoding="utf-8")
    return pkg
