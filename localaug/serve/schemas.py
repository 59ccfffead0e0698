"""Request bodies of the HTTP server (pydantic): the OpenAI subset we honour, and the task endpoints.

Types are strict (a string where a number belongs is a 400, not a silent coercion); unknown keys
are ignored, as OpenAI clients send extras. Options we cannot honour are rejected by name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class Sampling(_Body):
    """Sampling options shared by every generating endpoint (None: the model's default)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    seed: int | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class OpenAIBody(Sampling):
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # accepted when neutral (clients send the defaults), refused otherwise
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | int | None = None
    tools: list[dict] | None = None  # type: ignore[type-arg]

    def unsupported(self) -> str | None:
        """Why this request asks for something the server does not do (None: it does not)."""
        if self.frequency_penalty or self.presence_penalty:
            return "frequency_penalty and presence_penalty are not supported: use repeat_penalty (e.g. 1.1)"
        if self.logprobs:
            return "logprobs are not supported by this server"
        if self.tools:
            return "tools / function calling are not supported by this server"
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
    n: int = Field(3, ge=1)
    max_samples: int | None = Field(None, ge=1)


class SeedPair(_Body):
    instruction: str
    response: str


class PairsBody(Sampling):
    seeds: list[SeedPair] = Field(min_length=1)
    n: int = Field(1, ge=1)
    max_samples: int | None = Field(None, ge=1)
