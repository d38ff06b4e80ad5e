"""A small OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It lets a test drive the *real* litellm path (HTTP, the openai SDK, retries, timeouts) without the
internet. A ``responder`` decides each answer from the parsed request::

    def responder(request: dict) -> Reply | dict:
        return reply(tool_calls=[("get_order", {"order_id": "W1"})])

    with OpenAIServer(responder) as server:
        litellm.completion(model="openai/clone", api_base=server.base_url, api_key="x", messages=...)
        assert server.request_count == 1

A :class:`Reply` may carry an HTTP status (429, 500...), a delay (to test timeouts and
concurrency) or a raw body (to test garbage). Nothing here imports litellm or pyarrow.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OpenAIServer", "Reply", "reply"]


@dataclass
class Reply:
    """One scripted HTTP answer."""

    body: Mapping[str, Any] | str | bytes = field(default_factory=dict)
    status: int = 200
    delay: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)


def reply(
    text: str | None = None,
    tool_calls: Iterable[tuple[str, Mapping[str, Any] | str]] = (),
    *,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    model: str = "stub-model",
    delay: float = 0.0,
) -> Reply:
    """A 200 chat-completion answer with text and/or tool calls (arguments: dict or raw string)."""
    calls = []
    for i, (name, args) in enumerate(tool_calls):
        raw = args if isinstance(args, str) else json.dumps(args)
        calls.append({"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": raw}})
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Reply(body, delay=delay)


Responder = Callable[[dict[str, Any]], "Reply | Mapping[str, Any]"]


class OpenAIServer:
    """A threaded HTTP server answering ``POST .../chat/completions`` through ``responder``.

    ``requests`` keeps every parsed request body in arrival order (thread-safe).
    """

    def __init__(self, responder: Responder | None = None, *, host: str = "127.0.0.1") -> None:
        self.responder: Responder = responder or (lambda _req: reply("ok"))
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    request = json.loads(raw or b"{}")
                except ValueError:
                    request = {"_raw": raw.decode("utf-8", "replace")}
                with server._lock:
                    server.requests.append(request)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(Reply({"error": {"message": f"unknown path {self.path}"}}, status=404))
                    return
                try:
                    answer = server.responder(request)
                except Exception as exc:  # noqa: BLE001 (a responder bug is a 500 the test can see, not a hang)
                    answer = Reply({"error": {"message": f"responder raised {exc!r}"}}, status=500)
                self._send(answer if isinstance(answer, Reply) else Reply(answer))

            def _send(self, answer: Reply) -> None:
                if answer.delay:
                    # Sleep in slices so a closing server does not wait out a long "hang".
                    end = time.monotonic() + answer.delay
                    while time.monotonic() < end and not server._closing.is_set():
                        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
                body = answer.body
                if isinstance(body, Mapping):
                    data = json.dumps(body).encode()
                elif isinstance(body, str):
                    data = body.encode()
                else:
                    data = bytes(body)
                if answer.status >= 400 and isinstance(body, Mapping) and not body:
                    data = json.dumps({"error": {"message": f"stub status {answer.status}",
                                                 "type": "server_error"}}).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in answer.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self._httpd = Server((host, 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-stub", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The ``api_base`` to give litellm, e.g. ``http://127.0.0.1:41234/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OpenAIServer:  # noqa: PYI034 (not subclassed)
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
