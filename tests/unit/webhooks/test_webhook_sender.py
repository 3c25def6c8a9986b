"""The HTTP sender: what it sends, how it reports failures, how it judges a challenge.

Against a tiny HTTP server on loopback in this process (no services), answering as each test
tells it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.config.webhooks import WebhookSettings
from pipeline.webhooks.errors import ChallengeFailed
from pipeline.webhooks.sender import OutgoingRequest, Sender


@dataclass
class Seen:
    """A request as the server got it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    """What the server answers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Seen], Answer]


@contextmanager
def _server(handler: Handler) -> Iterator[tuple[str, list[Seen]]]:
    seen: list[Seen] = []

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            parts = urlsplit(self.path)
            request = Seen(
                self.command,
                parts.path,
                parse_qs(parts.query),
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )
            seen.append(request)
            answer = handler(request)
            self.send_response(answer.status)
            for k, v in answer.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _sender(**settings: object) -> Sender:
    return Sender(WebhookSettings(**settings))  # type: ignore[arg-type]


def test_post_sends_raw_body_with_signature_and_records_a_bounded_answer() -> None:
    with (
        _server(lambda r: Answer(202, b"y" * 5000)) as (base, seen),
        _sender(response_body_limit_bytes=100) as sender,
    ):
        result = sender.post(OutgoingRequest(1, f"{base}/x", b'{"a":1}', "abc"))
    assert result.ok and result.status_code == 202
    assert result.response_body == "y" * 100
    assert result.error_class is None and result.latency_ms >= 0
    assert seen[0].body == b'{"a":1}'
    assert seen[0].headers["x-nylas-signature"] == "abc"
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].headers["accept-encoding"] == "identity"  # nothing to inflate


def test_non_2xx_and_redirects_are_failures() -> None:
    def handler(request: Seen) -> Answer:
        if request.path == "/moved":
            return Answer(302, b"", {"Location": "http://169.254.169.254/"})
        return Answer(500, b"boom")

    with _server(handler) as (base, seen), _sender() as sender:
        r500 = sender.post(OutgoingRequest(1, f"{base}/x", b"{}", "s"))
        r302 = sender.post(OutgoingRequest(2, f"{base}/moved", b"{}", "s"))
    assert not r500.ok and r500.status_code == 500 and r500.response_body == "boom"
    assert r500.reason() == "HTTP 500: boom"
    assert not r302.ok and r302.status_code == 302  # never followed
    assert r302.error_class == "RedirectRefused"
    assert "http://169.254.169.254/" in r302.reason()
    assert [r.path for r in seen] == ["/x", "/moved"]


def test_network_errors_are_recorded_not_raised() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _sender() as sender:
        result = sender.post(OutgoingRequest(1, f"http://127.0.0.1:{port}/x", b"{}", "s"))
    assert not result.ok
    assert result.status_code is None
    assert result.error_class == "ConnectError"
    assert result.reason().startswith("ConnectError: ")


def test_post_many_returns_every_result_by_key() -> None:
    with (
        _server(lambda r: Answer(200 if r.path == "/ok" else 503)) as (base, _),
        _sender(per_destination_concurrency=4) as sender,
    ):
        reqs = [
            OutgoingRequest(i, f"{base}/{'ok' if i % 2 else 'no'}", b"{}", "s") for i in range(10)
        ]
        results = sender.post_many(reqs)
    assert sorted(results) == list(range(10))
    assert all(results[i].ok == bool(i % 2) for i in range(10))


def test_challenge_passes_when_the_value_is_echoed() -> None:
    def handler(request: Seen) -> Answer:
        assert request.method == "GET"
        assert request.query["keep"] == ["1"]  # the URL's own query survives
        return Answer(200, (request.query["challenge"][0] + "\n").encode())

    with _server(handler) as (base, seen), _sender() as sender:
        sender.challenge(f"{base}/x?keep=1")
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (Answer(200, b"nope"), "body was not the challenge"),
        (Answer(404), "HTTP 404"),
        (Answer(301, b"", {"Location": "https://elsewhere/"}), "HTTP 301"),
    ],
)
def test_challenge_failures_say_what_to_do(answer: Answer, message: str) -> None:
    with (
        _server(lambda r: answer) as (base, _),
        _sender() as sender,
        pytest.raises(ChallengeFailed) as err,
    ):
        sender.challenge(f"{base}/x")
    assert message in str(err.value)
    assert "?challenge=<value>" in str(err.value)


def test_an_unreachable_challenge_is_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _sender() as sender, pytest.raises(ChallengeFailed, match="could not be reached"):
        sender.challenge(f"http://127.0.0.1:{port}/x")


# --- the connection goes to the address the guard checked (no second, unchecked lookup) ------


class Rebinding:
    """A name server that answers each lookup of a name from a script (DNS rebinding)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_a_name_that_turns_internal_after_the_check_is_not_connected_to() -> None:
    # The destination check saw a public address; when the POST connects, the same name
    # answers 127.0.0.1. The sender looks it up through the guard, so it refuses to connect.
    dns = Rebinding(["93.184.216.34"], ["127.0.0.1"])
    assert dns("hook.example.test", 80) == ["93.184.216.34"]  # what the destination check saw
    with _server(lambda r: Answer(200)) as (base, seen):
        port = urlsplit(base).port
        with Sender(WebhookSettings(), resolver=dns) as sender:
            result = sender.post(
                OutgoingRequest(1, f"http://hook.example.test:{port}/x", b"{}", "s")
            )
    assert not result.ok and result.status_code is None
    assert result.error_class == "ConnectError"
    assert "not a public address" in result.reason()
    assert seen == []  # no request reached the internal address
    assert dns.lookups == ["hook.example.test", "hook.example.test"]


def test_an_allowed_name_is_connected_to_at_the_address_the_guard_returned() -> None:
    # The name exists only in the stand-in resolver: the request arriving proves that the
    # connection went to the address that lookup (and its check) returned.
    dns = Rebinding(["127.0.0.1"])
    settings = WebhookSettings(allowed_networks="127.0.0.0/8")  # type: ignore[arg-type]
    with _server(lambda r: Answer(204)) as (base, seen):
        port = urlsplit(base).port
        with Sender(settings, resolver=dns) as sender:
            result = sender.post(
                OutgoingRequest(1, f"http://only.in.stub.test:{port}/x", b"{}", "s")
            )
    assert result.ok and result.status_code == 204
    assert [r.path for r in seen] == ["/x"]
    assert seen[0].headers["host"] == f"only.in.stub.test:{port}"
