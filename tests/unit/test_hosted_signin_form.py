"""The hosted sign-in's signed form state without HTTP (pipeline.applications.hosted): only a
flow signed with the form key and not expired comes back; an altered one (another redirect URI,
another client), one signed under another key, an expired one or garbage gives None."""

from __future__ import annotations

import base64
import time

import pytest

from pipeline.applications.hosted import Flow, form_key, redirect_to, sign, verify

KEY = form_key("first-encryption-key")


def _flow(**changes: object) -> Flow:
    values: dict[str, object] = {
        "client_id": "app",
        "redirect_uri": "https://app.example/callback",
        "state": "xyz",
        "expires": int(time.time()) + 60,
    }
    values.update(changes)
    return Flow.model_validate(values)


def test_a_signed_flow_comes_back_as_it_was() -> None:
    flow = _flow(code_challenge="abc", provider="icloud")
    assert verify(KEY, sign(KEY, flow)) == flow


@pytest.mark.parametrize(
    "changes", [{"redirect_uri": "https://evil.example/cb"}, {"client_id": "other"}]
)
def test_an_altered_flow_is_refused(changes: dict[str, object]) -> None:
    _, mac = sign(KEY, _flow()).rsplit(".", 1)
    altered = _flow(**changes).model_dump_json().encode()
    assert verify(KEY, base64.urlsafe_b64encode(altered).decode() + "." + mac) is None


def test_another_key_an_expired_flow_or_garbage_is_refused() -> None:
    assert verify(form_key("rotated-key"), sign(KEY, _flow())) is None
    assert verify(KEY, sign(KEY, _flow(expires=int(time.time()) - 1))) is None
    for garbage in ("", "no-dot", "!!!.abc", "e30." + "0" * 64):
        assert verify(KEY, garbage) is None


def test_the_redirect_keeps_the_uri_query_and_adds_code_and_state() -> None:
    flow = _flow(redirect_uri="https://app.example/cb?x=1")
    assert redirect_to(flow, "c0de") == "https://app.example/cb?x=1&code=c0de&state=xyz"
    assert redirect_to(_flow(state=""), "c") == "https://app.example/callback?code=c"
