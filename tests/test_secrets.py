"""No secret in any output: recognisable fake keys in the environment, the params and the headers,
a provider whose error bodies echo the request (headers included), a malformed params value; then
every file the run wrote and everything it printed is scanned for them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone import redact

from .runtime_support import expert_like, make_project

ENV_SECRETS = {
    "OPENAI_API_KEY": "sk-envFAKEsecret0001abcdefgh",
    "ACME_SERVICE_TOKEN": "tokFAKEenvtoken0002zyxwv",
    "MY_PROVIDER_SECRET": "provFAKEsecret0003qqqq",
}
PARAM_KEY = "sk-paramFAKEsecret0004ijklmnop"
BEARER = "hdrFAKEbearer0005qrstuvw"
HEADER_KEY = "apikeyFAKEheader0006"
MALFORMED_KEY = "sk-malformedFAKE0007xyzxyz"
SECRETS = [*ENV_SECRETS.values(), PARAM_KEY, BEARER, HEADER_KEY, MALFORMED_KEY]


class EchoServer:
    """An OpenAI-compatible server that answers like the expert, except that it echoes the whole
    request (headers and body) in its error bodies: 400 for orders C3 and C7, 500 for L5, and 401
    for every request when ``refuse`` is set."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.count = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = json.loads(raw)
                server.count += 1
                # The credentials first, as a proxy's "invalid key: ..." would: within the part of an
                # error that reports keep (its first line, 300 characters).
                echo = (f"bad request with Authorization: {self.headers.get('Authorization')} api-key="
                        f"{self.headers.get('api-key')}; you sent headers {dict(self.headers.items())} "
                        f"and body {raw.decode()}")
                order = str(request["messages"][1]["content"]).split("orders ")[1].split(" and")[0]
                status = 401 if refuse else 400 if order in ("C3", "C7") else 500 if order == "L5" else 200
                body = expert_like(request).body if status == 200 else {"error": {"message": echo}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> EchoServer:  # noqa: PYI034 (not subclassed)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _params(base_url: str) -> dict[str, Any]:
    return {"api_base": base_url, "api_key": PARAM_KEY,
            "extra_headers": {"Authorization": f"Bearer {BEARER}", "api-key": HEADER_KEY}}


def _written_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        # The ini holds the params on purpose (that is where the user put them).
        if path.is_file() and path.name not in ("tox.ini", "pytest.ini"):
            yield path


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text or s[:14] in text]


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester) -> Path:
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    summary = pytester.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    return summary


def test_no_secret_in_any_report_file_or_output(pytester: pytest.Pytester, secret_env: Path) -> None:
    with EchoServer() as server:
        make_project(pytester, server.base_url, params=_params(server.base_url))
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-rA", "-v", "--bclone-max-retries=1",
            "--bclone-report-json=out/report.json", "--bclone-report-md=out/report.md",
            "--bclone-report-html=out/report.html", "--bclone-routes=out/routes.json",
            "--bclone-divergences=out/divergences.jsonl", "--junitxml=out/junit.xml",
        )
    report = json.loads((pytester.path / "out/report.json").read_text())
    # The scenario happened: calls failed with echoing bodies, and the errors are in the reports.
    assert report["agents"]["clone"]["failed"] >= 3
    written = {p.relative_to(pytester.path).as_posix(): p.read_text(errors="replace")
               for p in _written_files(pytester.path)}
    assert {"out/report.json", "out/report.md", "out/report.html", "out/routes.json", "out/divergences.jsonl",
            "out/junit.xml", "step_summary.md"} <= set(written)
    assert any(name.startswith(".bclone/cache/") for name in written)  # the cache is scanned too
    leaks = {name: _leaks(text) for name, text in written.items() if _leaks(text)}
    assert not leaks, leaks
    errors = json.dumps(report["errors"])
    assert "you sent headers" in errors and redact.MASK in errors  # the echo is kept, masked
    output = result.stdout.str() + result.stderr.str()
    assert "failed after 1 attempt (not retryable" in output  # the failed calls are shown...
    assert not _leaks(output), _leaks(output)  # ...without the secrets


def test_a_refusal_that_echoes_the_request_stops_the_run_without_showing_a_secret(
        pytester: pytest.Pytester, secret_env: Path) -> None:
    with EchoServer(refuse=True) as server:
        make_project(pytester, server.base_url, params=_params(server.base_url))
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--bclone-report-json=report.json")
    output = result.stdout.str() + result.stderr.str()
    assert "the clone openai/acme-clone-v8" in output and "HTTP 401" in output
    assert not _leaks(output), _leaks(output)
    for path in _written_files(pytester.path):
        assert not _leaks(path.read_text(errors="replace")), path


def test_a_malformed_params_value_is_reported_by_position_without_its_content(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\n"
        "bclone_dataset = support@v1\n"
        # a missing comma after the key: not JSON
        f'bclone_clone_params = {{"api_key": "{MALFORMED_KEY}" "extra_headers": {{"Authorization": '
        f'"Bearer {BEARER}"}}}}\n'
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 4
    err = result.stderr.str()
    assert ("ERROR: ini key bclone_clone_params: invalid value (value not shown: it may hold credentials): "
            "not valid JSON (Expecting ',' delimiter at line 1 column ") in err
    assert "set bclone_clone_params in your ini file" in err
    assert not _leaks(err + result.stdout.str())
    assert "Traceback" not in err
