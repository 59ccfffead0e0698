"""GGUF chat templates, rendered sandboxed and bounded: a known template to an exact string, every
budget at exactly its limit and one past it, the time budget checked where the module says it is
(a deadline already past stops a render at the first such check), and sandbox refusals.

Fast and pure: these guard ``localaug/family/templates.py`` in tools/mutation.py.
"""

from __future__ import annotations

import itertools
import time

import pytest

from localaug.core.errors import TemplateRenderError
from localaug.family import templates
from localaug.family.templates import MAX_EXTRA_OUTPUT, render

# Qwen2-Instruct's chat template (tokenizer_config.json of the Qwen2 instruct models)
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# a Llama-style template with a BOS token and a block layout (trim_blocks / lstrip_blocks apply)
LLAMA_STYLE = """{{ bos_token }}
{% for m in messages %}
    {% if m.role == 'user' %}
[INST] {{ m.content | trim }} [/INST]
    {% else %}
 {{ m.content }}{{ eos_token }}
    {% endif %}
{% endfor %}
"""

@pytest.fixture(autouse=True)
def _fresh_environment():
    """Each test builds the sandbox itself (it is built once per process, on first use), so that
    each one exercises how it is built, not only the first test to run."""
    templates._environment.cache_clear()
    templates._compiled.cache_clear()
    yield


STOPPED = "the model's chat template was stopped: "
FAILED = "the model's chat template failed to render ("
TAIL = "pass a model with a working template"


def stopped(reason: str) -> str:
    return f"{STOPPED}{reason}; {TAIL}"


def err(template: str, **context) -> str:
    with pytest.raises(TemplateRenderError) as e:
        render(template, **context)
    return str(e.value)


# --- a known template to an exact string ---------------------------------------------------------------


def test_qwen2_template_renders_chatml_byte_for_byte():
    msgs = [{"role": "user", "content": "写一首关于秋天的诗。\n要求：押韵"}]
    assert render(QWEN2, messages=msgs, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n写一首关于秋天的诗。\n要求：押韵<|im_end|>\n<|im_start|>assistant\n")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert render(QWEN2, messages=msgs, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")


def test_block_template_with_bos_and_eos():
    msgs = [{"role": "user", "content": "  Hi  "}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}]
    assert render(LLAMA_STYLE, messages=msgs, bos_token="<s>", eos_token="</s>") == (
        "<s>\n[INST] Hi [/INST]\n Hello</s>\n[INST] Bye [/INST]\n")


def test_a_render_is_repeatable_and_independent():
    t = "{% for i in range(60000) %}{% endfor %}{{ x }}"
    assert render(t, x="a") == "a"
    assert render(t, x="b") == "b"  # the range budget is per render


# --- sandbox and failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "context", "message"), [
    ("{% set x = [] %}{{ x.append(1) }}", {},
     "(SecurityError: access to attribute 'append' of 'list' object is unsafe.): "),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", {},
     "(SecurityError: access to attribute '__class__' of 'str' object is unsafe.): "),
    ("{{ raise_exception('no system role') }}", {}, "(TemplateError: no system role): "),
    ("{{ lipsum(3) }}", {}, "(UndefinedError: 'lipsum' is undefined): "),
    ("{{ x / 0 }}", {"x": 1}, "(ZeroDivisionError: division by zero): "),
    ("{% if %}", {}, "(TemplateSyntaxError: Expected an expression, got 'end of statement block'): "),
])
def test_failures_are_one_error_naming_the_cause(template, context, message):
    text = err(template, **context)
    assert text.startswith(FAILED[:-1] + message) and text.endswith(TAIL)


def test_failure_detail_is_one_line_of_at_most_200_characters():
    text = err("{{ raise_exception(x) }}", x="a\n\n b " * 100)
    detail = ("a b " * 100)[:200]
    assert text == f"{FAILED}TemplateError: {detail}): {TAIL}"


def test_a_recursive_loop_takes_one_iterable():
    t = "{% for a in items recursive %}{{ a['n'] }}{% if a['c'] %}({{ loop(a['c']) }}){% endif %}{% endfor %}"
    items = [{"n": 1, "c": [{"n": 2, "c": []}, {"n": 3, "c": []}]}, {"n": 4, "c": []}]
    assert render(t, items=items) == "1(23)4"
    text = err(t.replace("loop(a['c'])", "loop(a['c'], 1)"), items=items)
    assert text.startswith(FAILED + "TypeError: ")


def test_endless_recursion():
    assert err("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}") == (
        f"the model's chat template recursed without end: {TAIL}")


def test_strftime_now_format_is_cut_to_200_characters():
    year = time.strftime("%Y")
    assert render("{{ strftime_now('%Y') }}") == year
    assert render("{{ strftime_now(f) }}", f="%Y" * 150) == year * 100
    assert render("{{ strftime_now(f) }}", f="%Y" * 100 + "%%") == year * 100  # the 201st character is cut


# --- size budgets, at the limit and one past ------------------------------------------------------------


def test_output_budget_counts_what_it_was_given():
    half = MAX_EXTRA_OUTPUT // 2
    two = "{{ 'a' * n }}{{ 'b' * m }}"
    assert len(render(two, n=half, m=half)) == MAX_EXTRA_OUTPUT
    # with n, m given as numbers, their text counts too: len("131072") + len("131078") = 12
    out = render(two, n=half, m=half + 12)
    assert len(out) == MAX_EXTRA_OUTPUT + 12
    assert err(two, n=half, m=half + 13) == stopped(f"its output passed {MAX_EXTRA_OUTPUT + 12} characters")


def test_output_budget_counts_message_contents():
    msgs = [{"role": "user", "content": "x" * 1000}, {"role": "user"}, "not a message"]
    limit = len(str(msgs)) + 1000 + 6 + MAX_EXTRA_OUTPUT  # the messages, their contents, n's 6 digits
    t = "{{ 'a' * n }}"
    assert len(render(t, messages=msgs, n=limit)) == limit
    assert err(t, messages=msgs, n=limit + 1) == stopped(f"it repeats a value {limit + 1} times")
    limit = 4 + 6 + MAX_EXTRA_OUTPUT  # "None" and n
    assert len(render(t, messages=None, n=limit)) == limit
    assert err(t, messages=None, n=limit + 1) == stopped(f"it repeats a value {limit + 1} times")


def test_repetition_at_the_limit_and_one_past():
    assert len(render("{{ 'ab' * 131072 }}")) == MAX_EXTRA_OUTPUT
    assert err("{{ 'ab' * 131073 }}") == stopped("it repeats a value 131073 times")
    assert err("{{ 131073 * 'ab' }}") == stopped("it repeats a value 131073 times")
    assert render("{{ (['a'] * 262144) | length }}") == "262144"
    assert err("{{ (['a'] * 262145) | length }}") == stopped("it repeats a value 262145 times")
    assert err("{{ (('a',) * 262145) | length }}") == stopped("it repeats a value 262145 times")
    assert render("{{ 3 * 4 }}{{ 2.5 * 2 }}") == "125.0"


def test_concatenation_builds_a_bounded_value():
    s = "a" * 262144  # given 262144: at most 524288
    assert len(render("{{ s + s }}", s=s)) == 2 * 262144
    assert err("{{ s + s }}", s=s + "a") == stopped("it built a value of 524290 items (at most 524289)")
    assert err("{% set l = ['a'] * 200000 %}{{ (l + l) | length }}") == stopped(
        "it built a value of 400000 items (at most 262144)")
    assert render("{% set l = ['a'] * 131072 %}{{ (l + l) | length }}") == "262144"


def test_power_at_the_limit_and_one_past():
    assert render("{{ 2 ** 64 }}") == "18446744073709551616"
    assert err("{{ x ** 65 }}", x=2) == stopped("a power of 65 is too large")
    assert err("{{ x ** -65 }}", x=2) == stopped("a power of -65 is too large")
    assert render("{{ x ** -64 }}", x=2) == str(2 ** -64)
    assert render("{{ x ** 64.0 }}", x=2) == str(2 ** 64.0)


@pytest.mark.parametrize("template", [
    "{{ 'x' | center(N) }}",
    "{{ 'x'.center(N) }}",
    "{{ 'x' | truncate(length=N) }}",
    "{{ '%Nd' % 1 }}",
    "{{ '%.Nf' % 1 }}",
    "{{ '%-Nd' | format(1) }}",
    "{{ '{:>N}'.format(1) }}",
    "{{ '{0:.Nf}'.format(1) }}",
    "{{ 'x'.ljust(N|int) }}",
])
def test_numeric_arguments_at_the_limit_and_one_past(template):
    render(template.replace("N", "100000"))
    assert err(template.replace("N", "100001")) == stopped("an argument of 100001 is over 100000")


def test_negative_and_float_arguments():
    assert err("{{ 'x'.center(n) }}", n=-100001) == stopped("an argument of -100001 is over 100000")
    assert err("{{ 'x'.center(n) }}", n=100000.5) == stopped("an argument of 100000.5 is over 100000")
    assert err("{{ 'x' | center(width=n) }}", n=-100001) == stopped("an argument of -100001 is over 100000")
    assert render("{{ 'ab'.center(4, '-') }}{{ 'x'.center(True) }}") == "-ab-x"
    assert render("{{ '%s|%5d' % ('a', 3) }}") == "a|    3"
    assert render("{{ '%s' | format('a') }}") == "a"
    assert render("{{ 'abcdef' | truncate(length=5, killwords=True, end='~', leeway=0) }}") == "abcd~"


def test_range_budget_sums_every_call_of_a_render():
    ok = "{% for i in range(50000) %}{% endfor %}{% for i in range(10, 50010) %}{% endfor %}done"
    assert render(ok) == "done"
    assert err(ok.replace("50010", "50011")) == stopped("its loops asked for over 100000 numbers")
    assert render("{% for i in range(5, 0) %}x{% endfor %}{{ range(3) | list }}") == "[0, 1, 2]"


def test_replace_growth_at_the_limit_and_one_past():
    s = "a" * 262144  # given 262144: at most 524288; each 'a' becomes 'bb'
    assert len(render("{{ s.replace('a', 'bb') }}", s=s)) == 524288
    assert err("{{ s.replace('a', 'bb') }}", s=s + "a") == stopped("a replace() would make 524290 characters")
    assert err("{{ s | replace('a', 'bb') }}", s=s + "a") == stopped("a replace() would make 524290 characters")
    assert len(render("{{ s.replace('a', 'bb', 10) }}", s=s + "a")) == 262155  # at most 10 replaced
    assert err("{{ s.replace('a', 'bb', -1) }}", s=s + "a") == stopped("a replace() would make 524290 characters")
    assert render("{{ s | replace('a', 'bb', 2) }}", s="aaa") == "bbbba"
    # an empty old string inserts before every character and at the end: len + 1 times
    assert render("{{ 'abc'.replace('', '-') }}") == "-a-b-c-"
    t = "{{ s.replace('', x) }}"  # n + 2(n + 1) characters, at most n + 2 + 256 Ki: n <= 131072
    assert len(render(t, s="a" * 131072, x="xx")) == 3 * 131072 + 2
    assert err(t, s="a" * 131073, x="xx") == stopped("a replace() would make 393221 characters")
    assert render("{{ s.replace('aa', 'b') }}", s="aaaa") == "bb"
    assert render("{{ s.replace('a', 'bb', 0) == s }}", s=s + "a") == "True"  # a count of 0 replaces nothing
    assert render("{{ x | replace('5', '66') }}", x=5) == "66"  # the filter on a number reads its text


def test_only_replace_and_join_are_checked_for_growth():
    """Other string methods whose arguments are strings are not read as a replace() or join()."""
    s = "ascii" * 1000
    assert render("{{ s.encode('ascii', 'x' * 1000) | length }}", s=s) == "5000"
    assert render("{{ s.count(t) }}{{ s.startswith(t) }}", s="a" * 1000, t="a" * 1000) == "1True"
    assert render("{{ 'abc'.upper() }}{{ 'a b c'.split(maxsplit=1) }}") == "ABC['a', 'b c']"


def test_join_growth_at_the_limit_and_one_past():
    # k empty items joined by sep: (k - 1) * len(sep) characters, at most len(sep) + len(str(items))
    # (4k for k empty strings) + 256 Ki. k = 3: len(sep) = 262144 + 12 is exactly the limit.
    items = [""] * 3
    sep = "x" * (MAX_EXTRA_OUTPUT + 12)
    assert render("{{ sep.join(items) }}", sep=sep, items=items) == sep * 2
    assert render("{{ items | join(sep) }}", sep=sep, items=items) == sep * 2
    limit = 2 * len(sep) + 1
    assert err("{{ sep.join(items) }}", sep=sep + "x", items=items) == stopped(f"a join() would make over {limit} characters")
    assert err("{{ items | join(sep) }}", sep=sep + "x", items=items) == stopped(f"a join() would make over {limit} characters")
    assert render("{{ [] | join(sep) }}{{ sep.join([]) }}|{{ ['a', 'b'] | join }}|{{ '-'.join('ab') }}", sep=sep) == "|ab|a-b"


# --- the time budget ---------------------------------------------------------------------------------------


class Obj:
    y = ""


@pytest.mark.parametrize(("template", "context"), [
    ("{% if x.y %}{% endif %}", {"x": Obj()}),              # an attribute lookup
    ("{% if x['y'] %}{% endif %}", {"x": {"y": ""}}),       # an item lookup
    ("{% macro m() %}{% endmacro %}{% if m() %}{% endif %}", {}),  # a call
    ("{% if x + 1 %}{% endif %}", {"x": 1}),                # an operator
    ("{% if x | length %}{% endif %}", {"x": ""}),          # a filter
    ("{% for a in x %}{% endfor %}", {"x": [1]}),           # a loop's iteration
    ("plain text", {}),                                     # a chunk of output
])
def test_a_deadline_already_past_is_checked_at_each_step(monkeypatch, template, context):
    monkeypatch.setattr(templates, "MAX_SECONDS", -1.0)
    assert err(template, **context) == stopped("it ran for over -1 s")


def test_the_time_budget_is_two_seconds_and_within_it_nothing_is_stopped(monkeypatch):
    assert render("{% if x.y %}{% endif %}{{ 'ok' }}", x=Obj()) == "ok"
    monkeypatch.setattr(time, "monotonic", lambda t=time.monotonic(): t)  # a frozen clock: never past
    assert render("{% for a in x %}{{ a }}{% endfor %}", x=[1, 2]) == "12"
    monkeypatch.setattr(templates, "MAX_SECONDS", 0.0)  # exactly at the deadline is not over it
    assert render("{% for a in x %}{{ a }}{% endfor %}", x=[1, 2]) == "12"


def endless(limit_s: float = 3.0):
    """Items without end; fails the render if nothing stops it within ``limit_s``."""
    start = time.monotonic()
    for _ in itertools.count():
        if time.monotonic() - start > limit_s:
            raise AssertionError("not stopped by the time budget")
        yield 0


@pytest.mark.parametrize("template", [
    "{% for a in x %}{% endfor %}",
    "{% for a in x %}{% for b in [1] %}{% endfor %}{% endfor %}",
    # a recursive loop: the children loop(…) iterates are checked too
    "{% for a in items recursive %}{% if a is mapping %}{{ loop(a['c']) }}{% endif %}{% endfor %}",
])
def test_loops_without_end_are_stopped(monkeypatch, template):
    monkeypatch.setattr(templates, "MAX_SECONDS", 0.2)
    t0 = time.monotonic()
    assert err(template, x=endless(), items=[{"c": endless()}]) == stopped("it ran for over 0.2 s")
    assert time.monotonic() - t0 < 2.5


def test_the_budget_message_names_the_default_seconds():
    t0 = time.monotonic()
    assert err("{% for a in x %}{% endfor %}", x=endless(10.0)) == stopped("it ran for over 2 s")
    assert 1.9 < time.monotonic() - t0 < 8.0
