"""Query parameters read into one pydantic model, for the endpoints a client calls most.

FastAPI validates each declared parameter on its own, through its dependency machinery: for a
list call with twenty parameters and a few dependencies that was about 40 % of the API's CPU per
request. An endpoint that takes ``request`` instead reads the query string once with
:func:`read_query` (one model validation) and documents the model's fields with
:func:`openapi_parameters` (``openapi_extra``), so ``/openapi.json`` shows the same parameters
with the same schemas as if they were declared one by one, and a bad value is the same 400 (the
error handler words a :class:`RequestValidationError` whatever raised it).

A model's fields are read as FastAPI reads declared ones: a ``list`` field takes every value of a
repeated parameter, any other field the last one; a parameter left out (or a list given no value)
takes the field's default; unknown parameters are ignored.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar, get_args, get_origin

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams

Model = TypeVar("Model", bound=BaseModel)


@cache
def _fields(model: type[BaseModel]) -> tuple[tuple[str, bool], ...]:
    """(name in the query string, whether it takes every value) of each field."""
    out = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        kinds = get_args(annotation) if get_origin(annotation) is not list else (annotation,)
        repeated = any(get_origin(kind) is list for kind in (annotation, *kinds))
        out.append((info.alias or name, repeated))
    return tuple(out)


def read_query(model: type[Model], query: QueryParams) -> Model:
    """The query string as ``model``.

    Raises:
        RequestValidationError: A value does not validate (each error located in ``query``,
            as FastAPI locates a declared parameter's).
    """
    values: dict[str, Any] = {}
    for name, repeated in _fields(model):
        if name not in query:
            continue
        if repeated:
            values[name] = query.getlist(name)
        else:
            values[name] = query[name]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]
        ) from None


def openapi_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI query parameters of the model's fields, as FastAPI writes declared ones."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    assert "$defs" not in schema, "query parameters are scalars and lists of them"
    properties = schema["properties"]
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", ()),
            "schema": properties[name],
        }
        for name, _ in _fields(model)
    ]
