"""docs/architecture.md draws the house as it is: its tree lists every module under localaug/, one
line each with what it holds, and no module that is gone."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"


def tree_modules(doc: str) -> dict[str, str]:
    """The modules the "## The tree" block lists (path -> its line's description), its folders
    nested by two spaces of indent."""
    block = doc.split("## The tree", 1)[1].split("```", 2)[1]
    found: dict[str, str] = {}
    folders: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name, _, description = line.strip().partition(" ")
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            found["/".join([*folders, name])] = description.strip()
    return found


def test_the_tree_lists_every_module_and_only_those() -> None:
    listed = tree_modules(DOC.read_text(encoding="utf-8"))
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "localaug").rglob("*.py")}
    assert sorted(on_disk - set(listed)) == [], "add these modules to docs/architecture.md's tree"
    assert sorted(set(listed) - on_disk) == [], "these modules are gone: take them out of docs/architecture.md's tree"
    assert [path for path, what in listed.items() if not what] == [], "say in one line what each module holds"


def test_the_tree_reader_sees_a_missing_and_a_gone_module() -> None:
    doc = ("## The tree\n\n```\nlocalaug/\n  api.py        the public API\n  cli/\n    main.py     the app\n"
           "    render/\n      jobs.py   run summaries\n  core/\n    gone.py\ntests/        fixtures\n```\n")
    assert tree_modules(doc) == {"localaug/api.py": "the public API", "localaug/cli/main.py": "the app",
                                 "localaug/cli/render/jobs.py": "run summaries", "localaug/core/gone.py": ""}
