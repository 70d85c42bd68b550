"""A minimal client of the OpenAI-compatible chat-completions API (`POST {base}/chat/completions`),
as served by OpenAI, vLLM, llama.cpp, Ollama, LiteLLM and others. httpx's errors are translated here."""

from dataclasses import dataclass
from typing import Any

import httpx

from services.agent import AgentError

CONNECT_TIMEOUT_S = 10.0
ERROR_BODY_CHARS = 500  # of an error answer, kept in the message


class LlmError(AgentError):
    """The endpoint could not be reached, refused the request, or answered without a message."""


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


class ChatClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        *,
        temperature: float,
        max_tokens: int | None,
        timeout_s: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "autoresearch-agent"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, messages: list[Message]) -> str:
        """The assistant's answer to `messages`."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        try:
            answer = self._http.post("/chat/completions", json=body)
        except httpx.TransportError as exc:
            raise LlmError(f"chat completions at {self._http.base_url}: {exc or type(exc).__name__}") from exc
        if answer.status_code >= 400:
            raise LlmError(
                f"chat completions answered {answer.status_code}: {answer.text[:ERROR_BODY_CHARS]}"
            )
        return _content(answer)


def _content(answer: httpx.Response) -> str:
    try:
        content = answer.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise LlmError(f"not a chat completion: {answer.text[:ERROR_BODY_CHARS]}") from exc
    if not isinstance(content, str) or not content.strip():
        raise LlmError("the chat completion has no message content")
    return content
