"""The request bodies the server takes, as in OpenAI's API where it has the endpoint. Unknown fields are refused
by name rather than ignored: a client that sends logprobs or tools must hear that they are not served."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TOKENS_LIMIT = 4096  # the ceiling of --max-tokens; the server's own limit is usually lower


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Body):
    type: Literal["text"]
    text: str


class Message(Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(Body):
    include_usage: bool = False


class SamplingFields(Body):
    """What chat and text completions share."""

    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 stop strings, none empty")
        return stops

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)

    @model_validator(mode="after")
    def _last_turn(self):
        if self.messages[-1].role == "assistant":
            raise ValueError("messages: the last message is the assistant's; the model replies to a user turn")
        return self

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> list[dict]:
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]


class CompletionRequest(SamplingFields):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if len(prompts) != 1:
            raise ValueError("one prompt per request (send several requests: the server batches them)")
        if not prompts[0]:
            raise ValueError("the prompt is empty")
        return prompts[0]

    @property
    def limit(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(Body):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 bytes (the openai client's)
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ClassifyRequest(Body):
    model: str
    input: str | list[str] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1)

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class FeedbackRequest(Body):
    """Feedback on one earlier response, by the id it carried. At least one of the fields after request_id."""

    request_id: str = Field(min_length=1, max_length=100)
    index: int | None = Field(None, ge=0)  # which text of a classify request of several
    rating: Literal["up", "down"] | int | None = None
    label: str | None = Field(None, min_length=1)
    preferred: str | None = Field(None, min_length=1)
    comment: str | None = Field(None, max_length=10_000)

    @field_validator("rating")
    @classmethod
    def _rating(cls, value):
        if isinstance(value, int) and not 1 <= value <= 5:
            raise ValueError('a rating is "up", "down" or a score from 1 to 5')
        return value

    @model_validator(mode="after")
    def _something(self):
        if all(v is None for v in (self.rating, self.label, self.preferred, self.comment)):
            raise ValueError("give at least one of rating, label, preferred, comment")
        return self

    def columns(self) -> dict:
        thumb = {"up": 1, "down": -1}.get(self.rating) if isinstance(self.rating, str) else None
        score = self.rating if isinstance(self.rating, int) else None
        return {"thumb": thumb, "score": score, "label": self.label, "preferred": self.preferred,
                "comment": self.comment, "item": self.index}  # fmt: skip


class PromoteRequest(Body):
    model: str = Field(min_length=1)  # the served name to switch
    run: str = Field(min_length=1)  # the run to serve under it: a name, registry id or folder


class RollbackRequest(Body):
    model: str = Field(min_length=1)
