"""Query parameters read into one model (pipeline.api.params) behave as declared ones.

The reference is FastAPI itself: a route that declares the messages list's parameters one by one
(as the list did before it read them at once) next to a route that reads
:class:`~pipeline.api.messages.MessageListParams` with :func:`read_query`. Both must parse the
same values, refuse the same values with the same 400 text, and document the same parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import pytest
from fastapi import FastAPI, Query, Request

from pipeline.api import errors
from pipeline.api.messages import MessageListParams
from pipeline.api.params import openapi_parameters, read_query
from pipeline.search.criteria import MAX_LENGTH as MAX_SEARCH_LENGTH

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

Values = Annotated[list[str] | None, Query(max_length=50)]
Unix = Annotated[int | None, Query(ge=0, le=253_402_300_799)]
Fields = Literal[
    "standard", "include_headers", "include_basic_headers", "include_tracking_options", "raw_mime"
]


def _app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/declared")
    def declared(
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        page_token: Annotated[str | None, Query(max_length=512)] = None,
        thread_id: Annotated[str | None, Query(max_length=64)] = None,
        received_before: Unix = None,
        received_after: Unix = None,
        fields: Fields = "standard",
        select: Annotated[str | None, Query(max_length=1000)] = None,
        in_: Annotated[list[str] | None, Query(alias="in", max_length=50)] = None,
        unread: bool | None = None,
        starred: bool | None = None,
        subject: Annotated[str | None, Query(max_length=998)] = None,
        from_: Annotated[list[str] | None, Query(alias="from", max_length=50)] = None,
        to: Values = None,
        cc: Values = None,
        bcc: Values = None,
        any_email: Values = None,
        has_attachment: bool | None = None,
        metadata_pair: Annotated[str | None, Query(max_length=1000)] = None,
        search_query_native: Annotated[str | None, Query(max_length=MAX_SEARCH_LENGTH)] = None,
        query_imap: bool | None = None,
    ) -> dict[str, Any]:
        return dict(locals())

    @app.get("/model", openapi_extra={"parameters": openapi_parameters(MessageListParams)})
    async def model(request: Request) -> dict[str, Any]:
        return read_query(MessageListParams, request.query_params).model_dump()

    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    "query",
    [
        "",
        "limit=7&unread=true&starred=0&has_attachment=yes",
        "in=INBOX&in=Sent,Archive&from=a@x.test&from=b@x.test&to=&any_email=c@x.test",
        "limit=3&limit=9&subject=one&subject=two",  # a repeated scalar: the last one
        "received_before=0&received_after=253402300799&fields=include_headers&select=id",
        "page_token=abc&thread_id=t&metadata_pair=key1:v&search_query_native=ALL&query_imap=false",
        "unknown=1&limit=200",
    ],
)
def test_the_same_values(client: TestClient, query: str) -> None:
    declared = client.get(f"/declared?{query}")
    model = client.get(f"/model?{query}")
    assert declared.status_code == model.status_code == 200
    expected = {k.rstrip("_"): v for k, v in declared.json().items()}
    assert {k.rstrip("_"): v for k, v in model.json().items()} == expected


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=ten",
        "limit=",
        "unread=perhaps",
        "received_before=-1",
        "received_after=10000000000000",
        "fields=everything",
        "page_token=" + "x" * 513,
        "subject=" + "s" * 999,
        "&".join(f"to=a{i}@x.test" for i in range(51)),
        "&".join(f"in=f{i}" for i in range(51)),
        "limit=0&unread=maybe",
    ],
)
def test_the_same_refusals(client: TestClient, query: str) -> None:
    declared = client.get(f"/declared?{query}")
    model = client.get(f"/model?{query}")
    assert declared.status_code == model.status_code == 400, model.text
    assert model.json()["error"] == declared.json()["error"]


def test_the_same_openapi_parameters(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert paths["/model"]["get"]["parameters"] == paths["/declared"]["get"]["parameters"]
