"""A small synchronous client of the HTTP API (httpx), shared by the CLI and the MCP server.

    ClientError           anything that stops a call; `str()` is a message for a person
    ├── Unreachable       no answer from the controller: refused, timed out, a broken connection
    └── ApiError          the controller answered with a problem (RFC 9457): status, title, detail

httpx's exceptions are translated here and nowhere else. Submits carry an Idempotency-Key and are
retried on a broken connection (never on a refused one, and never on an answer), so a retry cannot
submit twice.
"""

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://localhost:8000"
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0  # a submit validates and compiles a train.py; reads answer in milliseconds
STREAM_READ_TIMEOUT_S = 60.0  # event streams send a keepalive every 15 s; four missed means it is gone
SUBMIT_ATTEMPTS = 3
RETRY_PAUSE_S = 1.0  # doubled after each failed attempt


class ClientError(Exception):
    """A call failed; the message is meant for a person."""


class Unreachable(ClientError):
    def __init__(self, url: str, why: str) -> None:
        super().__init__(
            f"cannot reach the autoresearch controller at {url}: {why}. Is it running? "
            "Point --url (or AUTORESEARCH_URL) at it."
        )
        self.url = url


class ApiError(ClientError):
    def __init__(self, status: int, title: str, detail: str, problem_type: str = "") -> None:
        super().__init__(f"{title} ({status}): {detail}" if detail else f"{title} ({status})")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem_type = problem_type


@dataclass(frozen=True)
class ServerEvent:
    """One server-sent event: its name, its data parsed as JSON, and its id (if it had one)."""

    event: str
    data: dict[str, Any]
    id: str | None = None


class ApiClient:
    def __init__(self, url: str, token: str | None, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": "autoresearch-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plain calls

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def text(self, path: str) -> str:
        return self._call("GET", path).text

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, json=body).json()

    def download(self, path: str, target: Path) -> str:
        """Write the answer's body to `target`; returns its `X-Research-Head` header ("" if none)."""
        answer = self._call("GET", path)
        target.write_bytes(answer.content)
        return str(answer.headers.get("X-Research-Head", ""))

    def put(self, path: str, body: dict[str, Any]) -> tuple[Any, int]:
        answer = self._call("PUT", path, json=body)
        return answer.json(), answer.status_code

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """(the proposal, created). Retried on a broken connection under one Idempotency-Key."""
        headers = {"Idempotency-Key": idempotency_key or f"cli-{uuid.uuid4().hex}"}
        pause = RETRY_PAUSE_S
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                answer = self._call("POST", "/v1/proposals", json=body, headers=headers, retry_broken=True)
                return dict(answer.json()), answer.status_code == httpx.codes.CREATED
            except _Broken as exc:
                if attempt == SUBMIT_ATTEMPTS:
                    raise Unreachable(self.url, f"the connection broke {attempt} times ({exc})") from exc
                time.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")

    # --- event streams

    def stream(self, path: str, headers: dict[str, str] | None = None) -> Iterator[ServerEvent]:
        """The events of a server-sent events stream until the server ends it."""
        timeout = httpx.Timeout(STREAM_READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            with self._http.stream("GET", path, headers=headers, timeout=timeout) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise _problem(answer)
                yield from _parse_events(answer.iter_lines())
        except httpx.ConnectError as exc:
            raise Unreachable(self.url, _why(exc)) from exc
        except httpx.TransportError as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    # --- one boundary for httpx's errors

    def _call(
        self,
        method: str,
        path: str,
        *,
        retry_broken: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise Unreachable(self.url, _why(exc)) from exc
        except httpx.TransportError as exc:
            if retry_broken:
                raise _Broken(str(exc) or type(exc).__name__) from exc
            raise Unreachable(self.url, str(exc) or type(exc).__name__) from exc
        if answer.status_code >= 400:
            raise _problem(answer)
        return answer


class StreamBroken(ClientError):
    """An event stream broke off before the server ended it (the caller may reconnect)."""


class _Broken(Exception):
    """A request whose connection broke after it was sent (it may or may not have arrived)."""


def _why(exc: httpx.ConnectError) -> str:
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps httpcore's error, which wraps the OSError
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or "cannot connect"


def _problem(answer: httpx.Response) -> ApiError:
    try:
        body = answer.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and "title" in body:
        return ApiError(
            int(body.get("status", answer.status_code)),
            str(body["title"]),
            str(body.get("detail", "")),
            str(body.get("type", "")),
        )
    return ApiError(answer.status_code, answer.reason_phrase or "HTTP error", answer.text[:300].strip())


def _parse_events(lines: Iterator[str]) -> Iterator[ServerEvent]:
    """The server-sent events wire format: fields until a blank line; comments start with ':'."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(event, json.loads("\n".join(data)), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
