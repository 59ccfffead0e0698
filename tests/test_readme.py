"""The README and docs/ drive these tests: the install and test commands CI runs are the README's,
every relative link and anchor in README.md and docs/*.md leads somewhere, every flag a README
example shows is one its command takes, and the README's quick start runs for real — SmolLM2-135M
standing in for the family model — and writes a training file that loads."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from localaug.cli.main import app

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
# Written on another line of work and linked from here before it lands; a file listed here that
# exists is checked like any other.
LINKED_BEFORE_IT_EXISTS = {REPO / "docs" / "configuration.md"}

runner = CliRunner()


# -- reading Markdown -------------------------------------------------------------------------------

def code_blocks(text: str, lang: str = "bash") -> list[str]:
    return re.findall(rf"(?ms)^```{lang}\n(.*?)^```", text)


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of level 1 or 2 (a ``# comment`` inside
    a code block is no heading)."""
    lines = text.split("\n")
    start = lines.index(f"## {heading}")
    fenced = False
    for end in range(start + 1, len(lines)):
        fenced ^= lines[end].startswith("```")
        if not fenced and re.match(r"#{1,2} ", lines[end]):
            break
    else:
        end = len(lines)
    return "\n".join(lines[start:end]) + "\n"


def shell_commands(block: str) -> list[list[str]]:
    """The ``localaug …`` commands of a bash block, as argument lists (without ``localaug``):
    continuation lines joined, comments dropped, pipes and ``&&`` split, ``VAR=x`` prefixes skipped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    found: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in {";", "&&", "||", "|", "&"}:
                if "localaug" in words:
                    found.append(words[words.index("localaug") + 1:])
                words = []
            else:
                words.append(token)
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", text)}


def broken_links(doc: Path) -> list[str]:
    """Relative links of ``doc`` whose file does not exist, or whose #anchor is no heading there."""
    text = re.sub(r"(?ms)^```.*?^```", "", doc.read_text(encoding="utf-8"))
    bad: list[str] = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        name, _, anchor = target.partition("#")
        path = (doc.parent / name).resolve() if name else doc
        if not path.exists():
            if path not in LINKED_BEFORE_IT_EXISTS:
                bad.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            bad.append(target)
    return bad


# -- the CLI's commands and options -----------------------------------------------------------------

def cli() -> Any:  # typer's own (vendored) click group
    return typer.main.get_command(app)


def command_for(words: list[str]) -> tuple[str, Any]:
    """The (sub)command a command line names, and its name, e.g. ``bundle export``."""
    command = cli()
    path: list[str] = []
    for word in words:
        if not hasattr(command, "commands") or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return " ".join(path), command


def options_of(command: Any) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")} | {"--help", "-h"}


def every_command() -> list[str]:
    found: list[str] = []

    def walk(group: Any, prefix: str) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found.append(prefix + name)

    walk(cli(), "")
    return found


# -- (a) commands, (b) links, (d) flags ---------------------------------------------------------------

def test_every_command_is_in_the_readme_or_the_command_reference() -> None:
    text = README.read_text(encoding="utf-8") + (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    commands = every_command()
    assert len(commands) == 22
    assert [c for c in commands if f"localaug {c}" not in text] == []
    # and each has its own heading in the reference
    headings = "\n".join(re.findall(r"(?m)^#{2,4} .+$", (REPO / "docs" / "commands.md").read_text(encoding="utf-8")))
    named = {c for c in commands if f"`localaug {c}`" in headings or f"`localaug {c.split()[0]}`" in headings}
    assert sorted(set(commands) - named - {"list", "ls"}) == []  # list and ls are models' other names


def test_every_relative_link_leads_to_a_file_and_heading_that_exist() -> None:
    assert len(DOCS) >= 12
    assert {doc.name: broken_links(doc) for doc in [README, *DOCS] if broken_links(doc)} == {}


def test_the_link_checker_sees_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## The `run` command (options)\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc\n\n## Here\n[a](other.md#the-run-command-options) [b](other.md#gone) [c](gone.md) "
                   "[d](#here) [e](#nowhere) [f](https://example.com/x.md)\n```bash\n[g](inside-code.md)\n```\n",
                   encoding="utf-8")
    assert broken_links(doc) == ["other.md#gone", "gone.md", "#nowhere"]


def examples_in(doc: Path) -> list[list[str]]:
    return [words for block in code_blocks(doc.read_text(encoding="utf-8")) for words in shell_commands(block)]


def test_every_flag_a_readme_or_docs_example_shows_is_one_its_command_takes() -> None:
    assert len(examples_in(README)) >= 8
    shown = [words for doc in [README, *DOCS] for words in examples_in(doc)]
    unknown: list[str] = []
    for words in shown:
        name, command = command_for(words)
        assert name, f"no such command: localaug {' '.join(words)}"
        flags = {w.split("=", 1)[0] for w in words if re.match(r"--?[a-zA-Z]", w)}
        unknown += [f"localaug {name} {flag}" for flag in sorted(flags - options_of(command))]
    assert unknown == []


def test_the_flag_reader_splits_pipes_and_continuations_and_sees_an_unknown_flag() -> None:
    block = ('echo "x" | localaug refine - --json --seed 7   # a comment --no-such\n'
             'HF_HUB_OFFLINE=1 localaug pull qwen2-exp:1.5b && localaug bundle export a -o m.tar\n'
             'localaug run expand -i a.jsonl \\\n    --respond-with m --format alpaca --no-such-flag\n')
    assert shell_commands(block) == [["refine", "-", "--json", "--seed", "7"], ["pull", "qwen2-exp:1.5b"],
                                     ["bundle", "export", "a", "-o", "m.tar"],
                                     ["run", "expand", "-i", "a.jsonl", "--respond-with", "m", "--format", "alpaca",
                                      "--no-such-flag"]]
    name, command = command_for(shell_commands(block)[3])
    assert name == "run" and {"--respond-with", "-i", "--format"} <= options_of(command)
    assert "--no-such-flag" not in options_of(command)
    assert command_for(["bundle", "export", "a"])[0] == "bundle export"


# -- CI installs what the README says -----------------------------------------------------------------

def test_ci_installs_and_tests_exactly_as_the_readme_says() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    install = ci.split('# README "Install"', 1)[1].split('# README "Test"', 1)[0]
    ci_install = [line for line in install.splitlines()[1:] if line.strip()]
    readme = README.read_text(encoding="utf-8")
    [dev_block] = code_blocks(section(readme, "Install").split("### Install (development, CPU)", 1)[1])
    assert ci_install == [line for line in dev_block.splitlines() if line.strip()][1:]  # after the venv line
    assert ci_install[0].startswith("export CMAKE_ARGS=") and len(ci_install) == 4
    assert code_blocks(section(readme, "Test")) == ["python -m pytest -q\n"]
    assert "python -m pytest -q" in ci


# -- (c) the quick start, for real --------------------------------------------------------------------

def quick_start_commands() -> list[list[str]]:
    blocks = code_blocks(section(README.read_text(encoding="utf-8"), "Quick start"))
    return [words for words in shell_commands(blocks[0]) if words[:1] == ["run"]]


def with_stand_in(words: list[str], model: Path, examples: Path) -> list[str]:
    """The quick-start command with SmolLM2-135M for every model it names, on two rows. In teacher
    mode the 135M model writes a short refined instruction only when shown short ones, and answers
    in a sentence or two only when asked to; left alone it rambles past any small --max-tokens."""
    out = list(words)
    for flag in ("-m", "--model", "--respond-with"):
        if flag in out:
            out[out.index(flag) + 1] = str(model)
    if "-m" not in out and "--model" not in out:
        out += ["-m", str(model)]
    return out + ["--limit", "2", "--temperature", "0", "--max-tokens", "48", "--respond-max-tokens", "128",
                  "--examples", str(examples),
                  "--system", "Rewrite the instruction to be more specific. Reply with one short instruction only.",
                  "--respond-system", "Answer in one or two sentences.", "--json"]


SHORT_EXAMPLES = [
    {"input": "Write a poem.", "output": "Write a four-line poem about the sea at night."},
    {"input": "Explain gravity.", "output": "Explain gravity to a ten-year-old in three sentences."},
    {"input": "Sort a list in Python.", "output": "Write a Python function that sorts a list of numbers in place."},
    {"input": "Describe Paris.", "output": "Describe three sights of Paris for a first-time visitor."},
]


def test_the_quick_start_writes_a_training_file_that_loads(tmp_path: Path, smollm2: Path, monkeypatch) -> None:
    [words] = quick_start_commands()  # one command, seeds to training file
    assert words[:2] == ["run", "refine"] and words[words.index("-i") + 1] == "examples/seeds.jsonl"
    assert "--respond-with" in words and words[words.index("--format") + 1] == "alpaca"
    out = Path(words[words.index("-o") + 1])

    shutil.copytree(REPO / "examples", tmp_path / "examples")  # the command's relative paths, outside the repo
    examples = tmp_path / "short-examples.jsonl"
    examples.write_text("".join(json.dumps(e) + "\n" for e in SHORT_EXAMPLES), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, with_stand_in(words, smollm2, examples))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)

    seeds = [json.loads(line)["instruction"] for line in (tmp_path / "examples" / "seeds.jsonl").read_text().splitlines()]
    refined = [json.loads(line) for line in Path(f"{out}.refine.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = [json.loads(line) for line in Path(f"{out}.ledger.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["instruction"] for r in refined) == sorted(seeds[:2])  # --limit 2: the first two seeds
    refined_ok = {r["output"] for r in refined if r["status"] == "ok"}
    assert {a["instruction"] for a in answers} <= refined_ok and len(answers) == len(refined_ok)

    train = json.loads(out.read_text(encoding="utf-8"))  # a .json name: one JSON array
    expected = [{"instruction": a["instruction"], "input": "", "output": a["response"],
                 "system": "Answer in one or two sentences."} for a in answers if a["status"] == "ok"]
    assert len(train) >= 1
    assert sorted(train, key=json.dumps) == sorted(expected, key=json.dumps)
    assert summary["exported"] == len(train) == summary["output_counts"]["ok"]
    assert json.loads((out.parent / "dataset_info.json").read_text(encoding="utf-8")) == {
        "train": {"file_name": "train.json", "formatting": "alpaca",
                  "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}}}
