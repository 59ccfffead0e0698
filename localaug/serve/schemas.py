"""Request bodies of the HTTP server (pydantic): the OpenAI subset we honour, and the task endpoints.

Types are strict (a string where a number belongs is a 400, not a silent coercion), numbers are
bounded to what llama.cpp takes, and text must be valid Unicode (an unpaired surrogate, which JSON
escapes can carry, is a 400). The task endpoints refuse unknown keys (a typo is not ignored); the
OpenAI endpoints accept only the extra keys that change nothing (``user``, ``metadata``, ...) and
refuse, by name, every other option they do not honour: a field that would change what the client
gets is never ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

INT32 = 2**31 - 1
INT64 = 2**63 - 1


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self) -> Any:
        for name, value in self:
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str):
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError as e:
                        raise ValueError(f"{name} holds an unpaired surrogate at character {e.start}: send valid "
                                         "Unicode text") from None
        return self


class Sampling(_Body):
    """Sampling options shared by every generating endpoint (None: the model's default)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=INT32)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=INT32)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    repeat_penalty: float | None = Field(None, gt=0, le=10, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-INT64, le=INT64)


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    """OpenAI's ``response_format``: plain text, any JSON object, or JSON matching a schema (decoded
    under a llama.cpp grammar, so the reply is valid JSON whenever it ends with "stop")."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> Any:
        if self.type == "json_schema" and not isinstance((self.json_schema or {}).get("schema"), dict):
            raise ValueError('type "json_schema" needs json_schema.schema: a JSON Schema object')
        return self


# OpenAI options that change nothing here: accepted and ignored. Any other key this server does not
# know is refused by name.
NEUTRAL_EXTRAS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})


class OpenAIBody(Sampling):
    model_config = ConfigDict(strict=True, extra="allow")

    max_completion_tokens: int | None = Field(None, ge=1, le=INT32)
    n: int = Field(1, ge=1, le=INT32)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # accepted when neutral (clients send the defaults), refused otherwise
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    tools: list[dict] | None = None  # type: ignore[type-arg]
    tool_choice: str | dict[str, Any] | None = None

    def unsupported(self) -> str | None:
        """Why this request asks for something the server does not do (None: it does not)."""
        unknown = sorted(set(self.model_extra or {}) - NEUTRAL_EXTRAS)
        if unknown:
            return f"{', '.join(unknown)}: not supported by this server; remove {'them' if len(unknown) > 1 else 'it'}"
        if self.frequency_penalty or self.presence_penalty:
            return "frequency_penalty and presence_penalty are not supported: use repeat_penalty (e.g. 1.1)"
        if self.logprobs or self.top_logprobs:
            return "logprobs are not supported by this server"
        if self.logit_bias:
            return "logit_bias is not supported by this server"
        if self.tools or self.tool_choice not in (None, "none"):
            return "tools and tool_choice (function calling) are not supported by this server"
        return None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # a participant's name: accepted, changes nothing here

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(OpenAIBody):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(OpenAIBody):
    prompt: str | list[str]
    echo: bool = False


class RefineBody(Sampling):
    text: str


class ExpandBody(Sampling):
    text: str
    n: int = Field(3, ge=1, le=INT32)
    max_samples: int | None = Field(None, ge=1, le=INT32)


class SeedPair(_Body):
    instruction: str
    response: str


class PairsBody(Sampling):
    seeds: list[SeedPair] = Field(min_length=1)
    n: int = Field(1, ge=1, le=INT32)
    max_samples: int | None = Field(None, ge=1, le=INT32)
