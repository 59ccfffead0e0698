"""Chat templates from GGUF metadata, rendered sandboxed *and bounded*.

A template is data from a file, never trusted code: it renders in Jinja's immutable sandbox (no
attribute tricks, no mutation of what it is given) and within budgets, so that a hostile template
cannot freeze or exhaust the process that renders it:

- time: ``MAX_SECONDS`` of wall-clock time per render, checked at every iteration of every loop
  (each ``for`` iterates through a ticking wrapper put in when the template is parsed, recursive
  loops too), every function call, filter, attribute or item lookup, operator and chunk of output:
  a template cannot run for long without doing one of those;
- work: all ``range()`` calls of one render together yield at most ``MAX_RANGE`` numbers;
- size: the output may not exceed the size of what it was given plus ``MAX_EXTRA_OUTPUT``; string
  and list repetition (``*``), powers (``**``), ``replace`` and ``join`` results, and numeric filter
  or method arguments are bounded before they can allocate.

Anything a template raises (a syntax error, ``raise_exception``, ZeroDivisionError, OverflowError,
RecursionError, a budget) is one ``TemplateRenderError`` naming the cause.
"""

from __future__ import annotations

import contextvars
import re
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateError, nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localaug.core.errors import TemplateRenderError

MAX_SECONDS = 2.0
MAX_RANGE = 100_000  # numbers all range() calls of one render may yield
MAX_EXTRA_OUTPUT = 256 * 1024  # characters beyond the size of the messages
MAX_ARGUMENT = 100_000  # a numeric argument of a filter or method (widths, counts, repetitions)


class BudgetExceeded(Exception):
    """A render went over one of its budgets."""


class _Budget:
    def __init__(self, max_output: int) -> None:
        self.deadline = time.monotonic() + MAX_SECONDS
        self.range_left = MAX_RANGE
        self.max_output = max_output

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"it ran for over {MAX_SECONDS:g} s")

    def size(self, value: Any) -> Any:
        if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > self.max_output:
            raise BudgetExceeded(f"it built a value of {len(value)} items (at most {self.max_output})")
        return value


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("template_budget")


def _budget() -> _Budget:
    return _BUDGET.get()  # set by render() around compiling and rendering alike


def _check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_ARGUMENT:
            raise BudgetExceeded(f"an argument of {value} is over {MAX_ARGUMENT}")


def _bounded_range(*args: int) -> range:
    budget = _budget()  # its call has ticked (_BoundedSandbox.call)
    numbers = range(*args)
    budget.range_left -= len(numbers)
    if budget.range_left < 0:
        raise BudgetExceeded(f"its loops asked for over {MAX_RANGE} numbers")
    return numbers


def _ticking(iterable: Any) -> Any:
    """``iterable``, checking the time budget at every item: what every template loop iterates."""
    budget = _budget()
    for item in iterable:
        budget.tick()
        yield item


LOOP_FILTER = "localaug_loop_budget"  # a filter: a template cannot shadow it (filters are not variables)


def _check_growth(value: Any, name: str, args: tuple[Any, ...]) -> None:
    """``replace`` and ``join`` whose result would pass the output budget (a long text joined by or
    replaced into a long text is quadratic) are refused before they allocate."""
    budget = _budget()
    if name == "replace" and isinstance(value, str) and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = value.count(old)  # an empty old string: len(value) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        if len(value) + count * (len(new) - len(old)) > budget.max_output:
            raise BudgetExceeded(f"a replace() would make {len(value) + count * (len(new) - len(old))} characters")
    elif name == "join" and isinstance(value, str) and args and hasattr(args[0], "__len__"):
        if (len(args[0]) - 1) * len(value) > budget.max_output:
            raise BudgetExceeded(f"a join() would make over {budget.max_output} characters")


def _raise(message: str) -> None:
    raise TemplateError(message)


_PERCENT_NUMBERS = re.compile(r"%[-#0 +]*(\d*)(?:\.(\d+))?")  # widths and precisions of % formats
_BRACE_NUMBERS = re.compile(r"\{[^{}]*?:[^{}]*?(\d+)(?:\.(\d+))?[^{}]*\}")  # the same in str.format specs


def _check_format(fmt: Any, pattern: re.Pattern[str]) -> None:
    """A format string may not ask for widths or precisions over the bound (they allocate)."""
    if isinstance(fmt, str):
        _check_arguments(tuple(int(n) for pair in pattern.findall(fmt) for n in pair if n), {})


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's syntax tree with every ``for`` iterating through ``_ticking``."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
        return tree

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807 - Jinja's signature
        budget = _budget()
        budget.tick()
        _check_arguments(args, kwargs)
        if isinstance(__obj, LoopContext) and args:  # loop(children) in a recursive loop: iterate it ticking
            args = (_ticking(args[0]), *args[1:])
        elif isinstance(getattr(__obj, "__self__", None), str):
            _check_growth(__obj.__self__, getattr(__obj, "__name__", ""), args)
        return budget.size(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget().tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)  # str.format / format_map of a string, sandboxed
        if wrapped is not None:
            _check_format(value.__self__, _BRACE_NUMBERS)
        return wrapped

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise BudgetExceeded(f"a power of {right} is too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > budget.max_output:
                    raise BudgetExceeded(f"it repeats a value {count} times")
        if operator == "%":
            _check_format(left, _PERCENT_NUMBERS)
        return budget.size(super().call_binop(context, operator, left, right))


def _bounded_filter(name: str, fn: Any) -> Any:
    passes = hasattr(fn, "jinja_pass_arg")  # pass_context / pass_environment: that comes first

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        value, rest = (args[1], args[2:]) if passes else (args[0], args[1:])
        _check_arguments(rest, kwargs)
        if name == "format":
            _check_format(value, _PERCENT_NUMBERS)
        elif name == "replace":
            _check_growth(value, name, rest)
        elif name == "join" and rest and isinstance(rest[0], str):
            _check_growth(rest[0], name, (value,))
        return budget.size(fn(*args, **kwargs))

    if passes:
        wrapper.jinja_pass_arg = fn.jinja_pass_arg  # type: ignore[attr-defined]
    return wrapper


def _make_environment() -> _BoundedSandbox:
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals.pop("lipsum", None)  # generates text of any size on request
    env.globals["range"] = _bounded_range
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt)[:200])
    env.filters = {name: _bounded_filter(name, fn) for name, fn in env.filters.items()}
    env.filters[LOOP_FILTER] = _ticking
    return env


@lru_cache(maxsize=1)
def _environment() -> _BoundedSandbox:
    return _make_environment()  # on first use: importing this module builds nothing


@lru_cache(maxsize=32)
def _compiled(template: str) -> Template:
    return _environment().from_string(template)


def render(template: str, **context: Any) -> str:
    """``template`` rendered with ``context`` within the budgets (see the module doc)."""
    given = sum(len(str(v)) for v in context.values()) + sum(
        len(str(m.get("content", ""))) for m in context.get("messages") or [] if isinstance(m, dict))
    budget = _Budget(given + MAX_EXTRA_OUTPUT)
    token = _BUDGET.set(budget)
    try:
        out: list[str] = []
        size = 0
        for chunk in _compiled(template).generate(**context):
            size += len(chunk)
            if size > budget.max_output:
                raise BudgetExceeded(f"its output passed {budget.max_output} characters")
            budget.tick()
            out.append(chunk)
        return "".join(out)
    except BudgetExceeded as e:
        raise TemplateRenderError(f"the model's chat template was stopped: {e}; pass a model with a working template") from None
    except RecursionError:
        raise TemplateRenderError("the model's chat template recursed without end: pass a model with a working template") from None
    except Exception as e:  # noqa: BLE001 - whatever a template raises is the template's fault
        detail = " ".join(str(e).split())[:200]
        raise TemplateRenderError(f"the model's chat template failed to render ({type(e).__name__}: {detail}): "
                                  "pass a model with a working template") from None
    finally:
        _BUDGET.reset(token)
