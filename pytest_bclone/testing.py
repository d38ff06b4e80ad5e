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

It also plays the provider *batch* API (``POST /v1/files``, ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches/{id}``): each line of an uploaded batch file is answered
by the same ``responder``; a line whose reply has an HTTP status >= 400 lands in the batch's error
file. :class:`BatchScript` decides how a batch plays out (how many polls it stays
``in_progress``, whether it ``completed``, ``expired`` part-way or ``failed``). Lines answered in
a batch are not chat requests: ``request_count`` counts live ``/chat/completions`` calls only.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["BatchScript", "OpenAIServer", "Reply", "reply"]


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


@dataclass
class BatchScript:
    """How the stub plays each batch it is given.

    ``polls_in_progress``: how many ``GET /v1/batches/{id}`` answer ``in_progress`` before the
    batch ends. ``outcome``: ``completed`` (every line answered), ``expired`` (only the first
    ``expire_after_lines`` lines answered, the rest left out, as a provider's 24 h window
    running out) or ``failed`` (the batch as a whole rejected: no output file).
    """

    polls_in_progress: int = 1
    outcome: Literal["completed", "expired", "failed"] = "completed"
    expire_after_lines: int = 0


@dataclass
class _Batch:
    id: str
    input_file_id: str
    created_at: int
    polls: int = 0
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})


class OpenAIServer:
    """A threaded HTTP server answering ``POST .../chat/completions`` through ``responder``.

    ``requests`` keeps every parsed request body in arrival order (thread-safe).
    """

    def __init__(self, responder: Responder | None = None, *, host: str = "127.0.0.1") -> None:
        self.responder: Responder = responder or (lambda _req: reply("ok"))
        self.requests: list[dict[str, Any]] = []
        self.batch_script = BatchScript()
        self.files: dict[str, bytes] = {}  # uploaded and produced files, by id
        self.batches: dict[str, _Batch] = {}
        self.batch_creates = 0  # POST /v1/batches received
        self.batch_lines_answered = 0  # batch lines the responder answered
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0].rstrip("/")
                if "/batches/" in path:
                    self._send(server._retrieve_batch(path.rsplit("/", 1)[1]))
                elif path.endswith("/content") and "/files/" in path:
                    file_id = path.rsplit("/", 2)[1]
                    data = server.files.get(file_id)
                    if data is None:
                        self._send(Reply({"error": {"message": f"no file {file_id}"}}, status=404))
                    else:
                        self._send(Reply(data))
                elif "/files/" in path:
                    file_id = path.rsplit("/", 1)[1]
                    self._send(server._file_object(file_id) if file_id in server.files
                               else Reply({"error": {"message": f"no file {file_id}"}}, status=404))
                else:
                    self._send(Reply({"error": {"message": f"unknown path {self.path}"}}, status=404))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                path = self.path.split("?")[0].rstrip("/")
                if path.endswith("/files"):
                    self._send(server._upload(self.headers.get("Content-Type", ""), raw))
                    return
                if path.endswith("/batches"):
                    self._send(server._create_batch(raw))
                    return
                try:
                    request = json.loads(raw or b"{}")
                except ValueError:
                    request = {"_raw": raw.decode("utf-8", "replace")}
                with server._lock:
                    server.requests.append(request)
                if not path.endswith("/chat/completions"):
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

    # -- the batch API ----------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids)}"

    def _file_object(self, file_id: str, purpose: str = "batch") -> Reply:
        return Reply({"id": file_id, "object": "file", "bytes": len(self.files[file_id]),
                      "created_at": int(time.time()), "filename": f"{file_id}.jsonl", "purpose": purpose,
                      "status": "processed"})

    def _upload(self, content_type: str, raw: bytes) -> Reply:
        """``POST /v1/files`` (multipart/form-data with ``file`` and ``purpose``)."""
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        data, purpose = None, "batch"
        for part in message.iter_parts() if message.is_multipart() else ():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if name == "file":
                data = payload
            elif name == "purpose" and isinstance(payload, bytes):
                purpose = payload.decode()
        if not isinstance(data, bytes):
            return Reply({"error": {"message": "multipart upload without a 'file' part"}}, status=400)
        file_id = self._new_id("file")
        self.files[file_id] = data
        return self._file_object(file_id, purpose)

    def _create_batch(self, raw: bytes) -> Reply:
        """``POST /v1/batches``: validates the input file; the lines are answered when polled."""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return Reply({"error": {"message": "batch create body is not JSON"}}, status=400)
        file_id = body.get("input_file_id")
        if file_id not in self.files:
            return Reply({"error": {"message": f"no input file {file_id!r}"}}, status=400)
        with self._lock:
            self.batch_creates += 1
        batch = _Batch(self._new_id("batch"), file_id, int(time.time()))
        self.batches[batch.id] = batch
        return self._batch_object(batch)

    def _retrieve_batch(self, batch_id: str) -> Reply:
        batch = self.batches.get(batch_id)
        if batch is None:
            return Reply({"error": {"message": f"no batch {batch_id}"}}, status=404)
        script = self.batch_script
        if batch.status in ("validating", "in_progress"):
            batch.polls += 1
            if batch.polls <= script.polls_in_progress:
                batch.status = "in_progress"
            else:
                self._finish_batch(batch, script)
        return self._batch_object(batch)

    def _finish_batch(self, batch: _Batch, script: BatchScript) -> None:
        lines = [json.loads(line) for line in self.files[batch.input_file_id].splitlines() if line.strip()]
        batch.counts["total"] = len(lines)
        if script.outcome == "failed":
            batch.status = "failed"
            return
        if script.outcome == "expired":
            lines = lines[: script.expire_after_lines]
        out: list[dict[str, Any]] = []
        err: list[dict[str, Any]] = []
        for line in lines:
            try:
                answer = self.responder(line["body"])
            except Exception as exc:  # noqa: BLE001 (a responder bug is a failed line the test can see)
                answer = Reply({"error": {"message": f"responder raised {exc!r}"}}, status=500)
            answer = answer if isinstance(answer, Reply) else Reply(answer)
            with self._lock:
                self.batch_lines_answered += 1
            body = answer.body if isinstance(answer.body, Mapping) else {"raw": str(answer.body)}
            record = {"id": self._new_id("batch_req"), "custom_id": line["custom_id"],
                      "response": {"status_code": answer.status, "request_id": "req", "body": body}, "error": None}
            (err if answer.status >= 400 else out).append(record)
        batch.counts["completed"], batch.counts["failed"] = len(out), len(err)
        if out:
            batch.output_file_id = self._new_id("file")
            self.files[batch.output_file_id] = "".join(json.dumps(r) + "\n" for r in out).encode()
        if err:
            batch.error_file_id = self._new_id("file")
            self.files[batch.error_file_id] = "".join(json.dumps(r) + "\n" for r in err).encode()
        batch.status = "expired" if script.outcome == "expired" else "completed"

    def _batch_object(self, batch: _Batch) -> Reply:
        return Reply({
            "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
            "input_file_id": batch.input_file_id, "completion_window": "24h", "status": batch.status,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "created_at": batch.created_at, "request_counts": dict(batch.counts), "metadata": None,
        })

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
