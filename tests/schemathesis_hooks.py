"""A schemathesis check loaded through SCHEMATHESIS_HOOKS by tests/test_hostile_server_round2.py:
every JSON answer, and every Server-Sent Event, of the server is strict JSON (no NaN, no Infinity)."""

from __future__ import annotations

import json

import schemathesis


def _refuse(token: str) -> None:
    raise AssertionError(f"the answer is not strict JSON: it holds {token}")


@schemathesis.check
def strict_json(ctx, response, case) -> None:  # noqa: ANN001 - schemathesis' check signature
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    text = response.content.decode("utf-8")
    if "json" in content_type:
        json.loads(text, parse_constant=_refuse)
    elif "event-stream" in content_type:
        for line in text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                json.loads(line[6:], parse_constant=_refuse)
