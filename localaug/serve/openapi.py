"""The server's OpenAPI description as it really answers, and a script-free page of it.

FastAPI documents a 422 for every body it validates; this server answers 400 instead, and also 401,
403, 404, 413, 429, 500 and 503, always as one OpenAI-shaped error object. ``describe`` rewrites the
generated schema to say so (clients and schema-driven testers such as schemathesis read it), and
``docs_page`` renders it as plain HTML: nothing of an offline tool loads scripts from a CDN.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}
WHY = {
    400: "The request asks for something invalid or past a limit (the message says which).",
    401: "Missing or wrong API key (when the server has one).",
    403: "A Host or Origin header this server does not answer to.",
    404: "No such model.",
    413: "The body is over the server's size limit.",
    429: "Every slot is busy and the queue is full: retry after Retry-After seconds.",
    500: "The model failed on this request (its chat template, or decoding).",
    503: "The model stopped serving, or the server is shutting down.",
}
ALWAYS = (401, 403, 500)
BY_METHOD = {"get": (), "post": (400, 404, 413, 429, 503)}
STREAMED = ("/v1/chat/completions", "/v1/completions")  # "stream": true answers Server-Sent Events
EVENT = {"type": "object", "required": ["data"],
         "properties": {"data": {"type": "string", "description": "one JSON chunk, or [DONE] at the end"}}}


def describe(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` for ``app``: the generated schema with the responses this server gives."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        components["Error"] = ERROR
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                statuses = {*ALWAYS, *BY_METHOD.get(method, ())}
                if path == "/health":
                    statuses.add(503)
                if "{" in path:
                    statuses.add(404)
                for status in sorted(statuses):
                    responses[str(status)] = {"description": WHY[status], "content": error}
                if path in STREAMED:
                    responses["200"].setdefault("content", {})["text/event-stream"] = {"schema": EVENT}
        app.openapi_schema = schema
        return schema

    return openapi


def docs_page(schema: dict[str, Any]) -> str:
    """The API as one HTML page: each operation, its summary, body and answers (no scripts)."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(schema['info']['title'])} API</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto}pre{background:#f4f4f4;padding:.5em;"
             "overflow:auto}code{font-weight:bold}</style></head><body>",
             f"<h1>{e(schema['info']['title'])} API</h1><p>The schema itself: <a href='/openapi.json'>/openapi.json</a></p>"]
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            parts.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2>")
            if op.get("summary") or op.get("description"):
                parts.append(f"<p>{e(op.get('description') or op.get('summary'))}</p>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parts.append(f"<p>Body: <code>{e(str(body.get('$ref', '')).rsplit('/', 1)[-1])}</code></p>")
            answers = ", ".join(f"{s} {e(r.get('description', ''))}" for s, r in op.get("responses", {}).items())
            parts.append(f"<p>Answers: {answers}</p>")
    parts.append("<h2>Schemas</h2>")
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        parts.append(f"<h3 id='{e(name)}'>{e(name)}</h3><pre>{e(json.dumps(component, indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
