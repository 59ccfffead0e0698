"""JSON Schema -> llama.cpp grammar (GBNF), bounded.

A schema of a few bytes can ask for a grammar of gigabytes: llama-cpp-python's converter spells
repetitions out (``"maxItems": 1000000`` is a million copies of the item rule, nested a million
deep), and llama.cpp's grammar parser recurses over that nesting: 20,000 levels crash the process,
a few thousand are refused only after the grammar was built. So every count the grammar grows with
is checked before converting (``GrammarLimits``), the conversion itself stops past a size and a
time budget, and the grammar's nesting is checked before llama.cpp parses it. Each refusal is a
``GrammarLimitError`` (a 400 from the server) naming the limit and where the schema hit it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from localaug.core.errors import UsageError


@dataclass(frozen=True)
class GrammarLimits:
    """What one JSON schema may ask of the grammar built from it."""

    max_repeat: int = 1000  # minItems/maxItems/minLength/maxLength and {m,n} in patterns (llama.cpp refuses ~2,000)
    max_enum: int = 256  # values of one enum: each is a branch the sampler tries at every token
    max_properties: int = 256  # properties of one object
    max_name: int = 256  # characters of a property name (rule names are made of them)
    max_depth: int = 64  # nesting of the schema's JSON objects and arrays
    max_nodes: int = 4096  # subschemas in all
    max_bytes: int = 256 * 1024  # the grammar's size
    max_seconds: float = 2.0  # converting it


class GrammarLimitError(UsageError):
    """A JSON schema asks for a grammar past one of the ``GrammarLimits``."""


_REPEATS = ("minItems", "maxItems", "minLength", "maxLength")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def _refuse(what: str, where: str, name: str, bound: str) -> GrammarLimitError:
    where = where if len(where) <= 80 else f"{where[:40]}…{where[-39:]}"
    return GrammarLimitError(f"the JSON schema asks for {what} at {where}, past this server's limit {name} = {bound}: "
                             "simplify the schema (and check that part of the reply yourself)")


def _at(where: str, key: object) -> str:
    text = str(key)
    return f"{where}[{text}]" if isinstance(key, int) else f"{where}.{text[:40]}{'…' if len(text) > 40 else ''}"


def _check_node(node: dict[str, Any], where: str, limits: GrammarLimits) -> None:
    for key in _REPEATS:
        n = node.get(key)
        if isinstance(n, (int, float)) and not isinstance(n, bool) and not 0 <= n <= limits.max_repeat:
            raise _refuse(f"{key} {n:g}" if isinstance(n, float) else f"{key} {n}", where,
                          "max_repeat", f"0..{limits.max_repeat}")
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > limits.max_enum:
        raise _refuse(f"an enum of {len(enum)} values", where, "max_enum", f"{limits.max_enum} values")
    props = node.get("properties")
    if isinstance(props, dict):
        if len(props) > limits.max_properties:
            raise _refuse(f"{len(props)} properties", where, "max_properties", f"{limits.max_properties} per object")
        long = next((k for k in props if len(k) > limits.max_name), None)
        if long is not None:
            raise _refuse(f"a property name of {len(long)} characters", where,
                          "max_name", f"{limits.max_name} characters")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        for m in _QUANTIFIER.finditer(pattern):
            for n in m.groups():
                if n and (len(n) > 9 or int(n) > limits.max_repeat):
                    raise _refuse(f"a pattern repeating {m.group(0)[:20]} times", where,
                                  "max_repeat", f"{limits.max_repeat} repetitions")


def _local(root: Any, ref: Any) -> Any:
    """The subschema a local ``$ref`` ("#/a/b") points to (None when it points nowhere)."""
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _merged_properties(node: dict[str, Any], root: Any) -> int:
    """How many properties an ``allOf`` merges into one object (its parts' and their references')."""
    parts = node.get("allOf")
    if not isinstance(parts, list):
        return 0
    flat = [p for part in parts if isinstance(part, dict)
            for p in (part["anyOf"] if isinstance(part.get("anyOf"), list) else [part])]
    total = 0
    for part in flat:
        target = _local(root, part.get("$ref")) if isinstance(part, dict) and "$ref" in part else part
        props = target.get("properties") if isinstance(target, dict) else None
        total += len(props) if isinstance(props, dict) else 0
    return total


def check_schema(schema: Any, limits: GrammarLimits = GrammarLimits()) -> None:
    """Refuse a schema whose grammar would outgrow ``limits`` (a walk of the schema, no conversion)."""
    stack: list[tuple[Any, str, int]] = [(schema, "$", 1)]
    nodes = 0
    while stack:
        node, where, depth = stack.pop()
        if depth > limits.max_depth:
            raise _refuse(f"nesting over {limits.max_depth} levels", where, "max_depth", f"{limits.max_depth} levels")
        if isinstance(node, dict):
            nodes += 1
            if nodes > limits.max_nodes:
                raise _refuse(f"over {limits.max_nodes} subschemas", where, "max_nodes", f"{limits.max_nodes} subschemas")
            _check_node(node, where, limits)
            merged = _merged_properties(node, schema)
            if merged > limits.max_properties:
                raise _refuse(f"an allOf of {merged} properties", where, "max_properties",
                              f"{limits.max_properties} per object")
            children = node.items()
        elif isinstance(node, list):
            children = enumerate(node)
        else:
            continue
        stack.extend((v, _at(where, k), depth + 1) for k, v in children if isinstance(v, (dict, list)))


_LITERALS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')  # "quoted" and [class] parts of GBNF
_NOT_PARENS = re.compile(r"[^()]+")


def grammar_depth(grammar: str) -> int:
    """The deepest nesting of parentheses in a GBNF grammar (one rule a line; quoted literals and
    [classes] skipped)."""
    deepest = 0
    for line in _LITERALS.sub("", grammar).split("\n"):
        depth = 0
        for c in _NOT_PARENS.sub("", line):
            depth += 1 if c == "(" else -1
            deepest = max(deepest, depth)
    return deepest


def _converter(limits: GrammarLimits) -> Any:
    from llama_cpp import llama_grammar

    class Bounded(llama_grammar.SchemaConverter):  # type: ignore[misc]
        """The converter, stopped once its rules pass ``max_bytes`` or it runs past ``max_seconds``."""

        def __init__(self) -> None:
            super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
            self.size = 0
            self.deadline = time.monotonic() + limits.max_seconds

        def _tick(self) -> None:
            if time.monotonic() > self.deadline:
                raise _refuse(f"a grammar that took over {limits.max_seconds:g} s to build", "$",
                              "max_seconds", f"{limits.max_seconds:g} s")

        def _add_rule(self, name: str, rule: str) -> str:
            self._tick()
            rules = len(self._rules)
            key = super()._add_rule(name, rule)
            if len(self._rules) > rules:  # a new rule (the converter adds many twice)
                self.size += len(key) + len(rule) + 5
                if self.size > limits.max_bytes:
                    raise _refuse(f"a grammar of over {limits.max_bytes} bytes", "$", "max_bytes",
                                  f"{limits.max_bytes} bytes")
            return key

        def visit(self, schema: Any, name: str) -> str:
            self._tick()
            return super().visit(schema, name)

    return Bounded()


def json_grammar(schema: dict[str, Any] | None = None, limits: GrammarLimits = GrammarLimits()) -> str:
    """A GBNF grammar for any JSON object (``schema`` None) or for JSON that matches ``schema``,
    within ``limits``: a GrammarLimitError past them, a UsageError for a schema that cannot be
    converted. CPU-bound for up to ``limits.max_seconds``: run it off an event loop."""
    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    check_schema(schema, limits)
    converter = _converter(limits)
    try:
        plain = json.loads(json.dumps(schema))  # a copy: resolving $refs rewrites them in place
        converter.visit(converter.resolve_refs(plain, "stdin"), "")
        grammar = converter.format_grammar()
        converter._tick()
    except GrammarLimitError:
        raise
    except (Exception, RecursionError) as e:  # noqa: BLE001 - the converter raises anything on odd schemas
        detail = " ".join(str(e).split())[:200]
        raise UsageError(f"the JSON schema cannot be turned into a grammar ({type(e).__name__}: {detail}): simplify it") from None
    depth = grammar_depth(grammar)
    if depth > limits.max_repeat + 64:  # llama.cpp's parser recurses once per level
        raise _refuse(f"a grammar nested {depth} levels deep", "$", "max_repeat", f"{limits.max_repeat + 64} levels")
    return grammar
