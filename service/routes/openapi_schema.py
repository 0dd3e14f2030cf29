"""The OpenAPI schema FastAPI generates, completed: the table of ``routes/openapi.py``
applied (bodies, answers, problem+json errors, headers), security from the settings, the body
schemas of ``service/schemas.py`` as components, and ``$defs`` that routes' own pydantic
schemas leave behind moved into components (so every reference resolves)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from service import schemas
from service.routes.openapi import (
    ERRORS,
    HEADERS,
    OPERATIONS,
    PROBLEM_JSON,
    REF,
    Op,
    header_param,
    json_body,
    problem,
)

_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def complete(spec: dict[str, Any], keyed: bool) -> dict[str, Any]:
    """Apply the table to FastAPI's schema. ``keyed``: API keys are configured, so operations
    that take one say so (and may answer 401)."""
    comp = spec.setdefault("components", {})
    found = comp.setdefault("schemas", {})
    found.update(schemas.defs(REF))
    comp["securitySchemes"] = _SECURITY_SCHEMES
    for path, method, op in _operations(spec):
        doc = OPERATIONS.get((method, path))
        _hoist_defs(op, found)
        _problem_errors(op)
        if doc is not None:
            _apply(op, doc, keyed)
        _normalize_headers(op)
    for unused in ("HTTPValidationError", "ValidationError"):
        found.pop(unused, None)
    _link_new_sessions(spec)
    return spec


def _link_new_sessions(spec: dict[str, Any]) -> None:
    """OpenAPI links from a created session to every operation on it (clients and
    schemathesis' stateful tests follow them)."""
    create = spec["paths"].get("/v1/sessions", {}).get("post")
    if create is None or "201" not in create["responses"]:
        return
    links = {}
    for path, _, op in _operations(spec):
        if "{session_id}" in path and "operationId" in op:
            links[op["operationId"]] = {
                "operationId": op["operationId"],
                "parameters": {"session_id": "$response.body#/id"},
            }
    create["responses"]["201"]["links"] = links


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                yield path, method, op


def _apply(op: dict[str, Any], doc: Op, keyed: bool) -> None:
    if doc.body is not None:
        op["requestBody"] = copy.deepcopy(doc.body)
    responses = {str(s): copy.deepcopy(r) for s, r in doc.ok.items()}
    errors = set(doc.errors) | ({401} if keyed and doc.keyed else set())
    for status in sorted(errors):
        responses.setdefault(str(status), problem(status))
    op["responses"] = responses
    params = op.setdefault("parameters", [])
    present = {p["name"] for p in params}
    params.extend(header_param(n) for n in doc.headers if n not in present)
    for name in doc.drop_query:
        params[:] = [p for p in params if not (p["in"] == "query" and p["name"] == name)]
    if not params:
        del op["parameters"]
    if keyed and doc.keyed:
        op["security"] = [{"bearer": []}, {"apiKey": []}]
    else:
        op.pop("security", None)


def _problem_errors(op: dict[str, Any]) -> None:
    """FastAPI documents its validation errors as JSON; this service answers problem+json."""
    for status, response in op.get("responses", {}).items():
        if str(status)[0] in "45":
            response["content"] = {PROBLEM_JSON: json_body("Problem")}
            if status == "422":
                response["description"] = ERRORS[422]


def _normalize_headers(op: dict[str, Any]) -> None:
    for p in op.get("parameters", ()):
        if p.get("in") == "header" and p["name"] in HEADERS:
            p.update(header_param(p["name"]))


def _hoist_defs(node: Any, found: dict[str, Any]) -> None:
    """Move ``$defs`` that a route's own ``model_json_schema()`` left in place into
    ``components/schemas`` and point their ``#/$defs/`` references there, renaming on clash."""
    if isinstance(node, list):
        for item in node:
            _hoist_defs(item, found)
        return
    if not isinstance(node, dict):
        return
    defs = node.pop("$defs", None)
    if isinstance(defs, dict):
        names: dict[str, str] = {}
        for name, schema in defs.items():
            same = copy.deepcopy(schema)
            _rewrite_refs(same, {})
            target, n = name, 1
            while target in found and found[target] != same:
                n += 1
                target = f"{name}{n}"
            names[name] = target
        _rewrite_refs(node, names)
        for name, schema in defs.items():
            _rewrite_refs(schema, names)
            found.setdefault(names[name], schema)
    for value in node.values():
        _hoist_defs(value, found)


def _rewrite_refs(node: Any, names: dict[str, str]) -> None:
    if isinstance(node, list):
        for item in node:
            _rewrite_refs(item, names)
    elif isinstance(node, dict):
        target = node.get("$ref")
        if isinstance(target, str) and target.startswith("#/$defs/"):
            name = target.removeprefix("#/$defs/")
            node["$ref"] = REF.format(model=names.get(name, name))
        for value in node.values():
            _rewrite_refs(value, names)
