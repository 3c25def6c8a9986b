"""The HTTP sender: what it sends, how it reports failures, how it judges a challenge."""

from __future__ import annotations

import httpx
import pytest

from pipeline.webhooks.errors import ChallengeFailed
from pipeline.webhooks.sender import OutgoingRequest, Sender
from pipeline.webhooks.settings import WebhookSettings


def _sender(handler, **settings: object) -> Sender:  # type: ignore[no-untyped-def]
    return Sender(WebhookSettings(**settings), transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_post_sends_raw_body_with_signature_and_records_a_bounded_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, content=b"y" * 5000)

    with _sender(handler, response_body_limit_bytes=100) as sender:
        result = sender.post(OutgoingRequest(1, "https://h.example/x", b'{"a":1}', "abc"))
    assert result.ok and result.status_code == 202
    assert result.response_body == "y" * 100
    assert result.error_class is None and result.latency_ms >= 0
    assert seen[0].content == b'{"a":1}'
    assert seen[0].headers["X-Nylas-Signature"] == "abc"
    assert seen[0].headers["Content-Type"] == "application/json"


def test_non_2xx_and_redirects_are_failures() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"Location": "http://169.254.169.254/"})
        return httpx.Response(500, text="boom")

    with _sender(handler) as sender:
        r500 = sender.post(OutgoingRequest(1, "https://h.example/x", b"{}", "s"))
        r302 = sender.post(OutgoingRequest(2, "https://h.example/moved", b"{}", "s"))
    assert not r500.ok and r500.status_code == 500 and r500.response_body == "boom"
    assert not r302.ok and r302.status_code == 302  # never followed


def test_network_errors_are_recorded_not_raised() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _sender(handler) as sender:
        result = sender.post(OutgoingRequest(1, "https://h.example/x", b"{}", "s"))
    assert not result.ok
    assert result.status_code is None
    assert result.error_class == "ConnectError"
    assert "refused" in (result.error_detail or "")


def test_post_many_returns_every_result_by_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.path == "/ok" else 503)

    reqs = [
        OutgoingRequest(i, f"https://h.example/{'ok' if i % 2 else 'no'}", b"{}", "s")
        for i in range(10)
    ]
    with _sender(handler, per_destination_concurrency=4) as sender:
        results = sender.post_many(reqs)
    assert sorted(results) == list(range(10))
    assert all(results[i].ok == bool(i % 2) for i in range(10))


def test_challenge_passes_when_the_value_is_echoed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.params["keep"] == "1"  # the URL's own query survives
        return httpx.Response(200, text=request.url.params["challenge"] + "\n")

    with _sender(handler) as sender:
        sender.challenge("https://h.example/x?keep=1")


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, text="nope"), "body was not the challenge"),
        (httpx.Response(404), "HTTP 404"),
        (httpx.Response(301, headers={"Location": "https://elsewhere/"}), "HTTP 301"),
    ],
)
def test_challenge_failures_say_what_to_do(response: httpx.Response, message: str) -> None:
    with _sender(lambda request: response) as sender, pytest.raises(ChallengeFailed) as err:
        sender.challenge("https://h.example/x")
    assert message in str(err.value)
    assert "?challenge=<value>" in str(err.value)


def test_challenge_timeout_is_reported() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with _sender(handler) as sender, pytest.raises(ChallengeFailed, match="within 10 s"):
        sender.challenge("https://h.example/x")
