"""A module's ``_names`` are its own: no module of ``localaug`` imports a private name of another
(``from localaug.store.local import _matching``), reaches one through a module it imported
(``store._matching``), or imports a private module (``cli/_errors.py``) from outside the package
that holds it. What two modules share is public, in the module that owns it (``store/layout.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "localaug"


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def within(package: str, holder: str) -> bool:
    return package == holder or package.startswith(holder + ".")


def private_uses(path: Path, package: Path = PACKAGE) -> list[str]:
    """``line: what`` for every private name of another localaug module this file uses."""
    me = module_name(path, package)
    my_package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    top = package.name
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> the localaug module (or object) it stands for

    def ours(module: str) -> bool:
        return module == top or module.startswith(top + ".")

    def is_module(dotted: str) -> bool:
        where = package.parent.joinpath(*dotted.split("."))
        return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()

    def check_module(line: int, module: str) -> None:
        """A private module (``cli/_errors.py``) belongs to the package that holds it."""
        parts = module.split(".")
        for i, part in enumerate(parts):
            holder = ".".join(parts[:i])
            if private(part) and not within(my_package, holder):
                found.append(f"{line}: imports {module}, private to {holder}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if ours(alias.name):
                    check_module(node.lineno, alias.name)
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and ours(node.module):
            check_module(node.lineno, node.module)
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if private(alias.name) and node.module != me:
                    if is_module(full):
                        check_module(node.lineno, full)
                    else:
                        found.append(f"{node.lineno}: imports {alias.name} from {node.module}")
                bound[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            path_ = []
            chain = node.value
            while isinstance(chain, ast.Attribute):
                path_.insert(0, chain.attr)
                chain = chain.value
            if isinstance(chain, ast.Name) and chain.id in bound:
                holder = ".".join([bound[chain.id], *path_])
                if holder != me and not (is_module(f"{holder}.{node.attr}") and within(my_package, holder)):
                    found.append(f"{node.lineno}: uses {ast.unparse(node)}, private to {holder}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_uses_another_modules_private_names(path: Path) -> None:
    assert private_uses(path) == []


def test_the_check_sees_each_kind_of_private_use(tmp_path: Path) -> None:
    package = tmp_path / "localaug"
    (package / "store").mkdir(parents=True)
    (package / "cli").mkdir()
    (package / "cli" / "_errors.py").write_text("", encoding="utf-8")
    source = package / "store" / "modelfile.py"
    source.write_text(
        "from localaug.store.local import _matching, resolve\n"
        "from localaug.store import local as store\n"
        "import localaug.store.layout\n"
        "from localaug.cli._errors import message\n"
        "from localaug._version import __version__\n"
        "from localaug.cli import _errors\n"
        "def f():\n"
        "    from localaug.store.local import _target as t\n"
        "    return store._raise_if_damaged, localaug.store.layout._private, store.root, __version__, self._own\n",
        encoding="utf-8",
    )
    assert private_uses(source, package) == [
        "1: imports _matching from localaug.store.local",
        "4: imports localaug.cli._errors, private to localaug.cli",
        "6: imports localaug.cli._errors, private to localaug.cli",
        "8: imports _target from localaug.store.local",
        "9: uses store._raise_if_damaged, private to localaug.store.local",
        "9: uses localaug.store.layout._private, private to localaug.store.layout",
    ]
    inside = package / "cli" / "main.py"  # a private module may be used by its own package
    inside.write_text("from localaug.cli._errors import message\nfrom localaug.cli import _errors\n"
                      "from localaug.cli.main import _helper\n", encoding="utf-8")
    assert private_uses(inside, package) == []
