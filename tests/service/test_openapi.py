"""/openapi.json: valid, complete (every body has a schema, every error is problem+json),
security from the settings, and live answers that match their documented schemas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from service.app import create_app
from service.routes.openapi import OPERATIONS
from service.routes.openapi_schema import complete
from service.settings import Settings

METHODS = ("get", "put", "post", "delete", "patch")
# Probe answers that are not errors but a state (a load balancer reads the status only).
PROBE_STATES = {("get", "/readyz", "503"), ("get", "/v2/health/ready", "503")}


def spec_for(api_keys: str = "") -> dict[str, Any]:
    return create_app(Settings(store="memory://", device="cpu", api_keys=api_keys)).openapi()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method, path, op


@pytest.mark.parametrize("api_keys", ["", "k1,k2"])
def test_spec_validates_with_and_without_keys(api_keys: str) -> None:
    validate(spec_for(api_keys))  # raises on any error


def test_every_operation_is_documented_in_the_table() -> None:
    missing = [(m, p) for m, p, _ in operations(spec_for()) if (m, p) not in OPERATIONS]
    assert missing == [], "add these to OPERATIONS in service/routes/openapi.py"


def test_every_reference_resolves() -> None:
    spec = spec_for()
    names = set(spec["components"]["schemas"])

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for target in refs(spec):
        assert target.startswith("#/components/schemas/"), target
        assert target.removeprefix("#/components/schemas/") in names, target


def test_v1_json_success_answers_have_real_schemas() -> None:
    for method, path, op in operations(spec_for()):
        for status, response in op["responses"].items():
            if not status.startswith("2"):
                continue
            for media, body in response.get("content", {}).items():
                schema = body.get("schema")
                assert schema, f"{method} {path} {status} {media} has no schema"
                if media == "application/json":
                    assert "$ref" in schema or "anyOf" in schema, (method, path, status)


def test_request_bodies_have_schemas() -> None:
    for method, path, op in operations(spec_for()):
        for media, body in op.get("requestBody", {}).get("content", {}).items():
            assert body.get("schema"), f"{method} {path} {media}"


def test_every_error_is_problem_json() -> None:
    for method, path, op in operations(spec_for("k1")):
        for status, response in op["responses"].items():
            if status[0] in "45" and (method, path, status) not in PROBE_STATES:
                assert response["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (method, path, status)
    schemas = spec_for()["components"]["schemas"]
    assert "HTTPValidationError" not in schemas


def test_binary_media_types_are_documented() -> None:
    paths = spec_for()["paths"]
    fit = paths["/v1/sessions/{session_id}/fit"]["post"]
    assert set(fit["requestBody"]["content"]) == {"application/json", "application/x-npy"}
    assert set(fit["responses"]["200"]["content"]) == {"application/json", "application/x-npy"}
    assert "BN-Batch-Mean" in fit["responses"]["200"]["headers"]
    for route in ("backward", "fold"):
        op = paths[f"/v1/sessions/{{session_id}}/{route}"]["post"]
        assert "application/x-safetensors" in op["requestBody"]["content"]
        assert "application/x-safetensors" in op["responses"]["200"]["content"]
    stats = paths["/v1/sessions/{session_id}/stats"]
    assert "application/x-safetensors" in stats["get"]["responses"]["200"]["content"]
    assert "application/x-safetensors" in stats["put"]["requestBody"]["content"]
    infer = paths["/v2/models/{session_id}/infer"]["post"]
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert "Inference-Header-Content-Length" in {p["name"] for p in infer["parameters"]}
    answer = infer["responses"]["200"]
    assert "application/octet-stream" in answer["content"]
    assert "Inference-Header-Content-Length" in answer["headers"]
    assert "version" not in {p["name"] for p in infer["parameters"]}


def test_metrics_are_documented_as_text() -> None:
    content = spec_for()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"text/plain"}


def test_without_keys_no_operation_asks_for_one() -> None:
    spec = spec_for()
    for method, path, op in operations(spec):
        assert "security" not in op, (method, path)
        assert "401" not in op["responses"], (method, path)


def test_with_keys_data_operations_ask_for_one_and_probes_do_not() -> None:
    spec = spec_for("k1")
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for method, path, op in operations(spec):
        data = path.startswith(("/v1/", "/v2/models/"))
        assert ("security" in op) == data, (method, path)
        assert ("401" in op["responses"]) == data, (method, path)
        if data:
            assert op["security"] == [{"bearer": []}, {"apiKey": []}]


def test_complete_hoists_defs_a_route_schema_left_behind() -> None:
    """routes/stats.py embeds ``StatsImport.model_json_schema()``, whose ``$defs`` would dangle."""
    embedded = {
        "type": "object",
        "properties": {"population": {"$ref": "#/$defs/Population"}},
        "$defs": {"Population": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    }
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/x": {
                "put": {
                    "requestBody": {"content": {"application/json": {"schema": embedded}}},
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
        "components": {"schemas": {"Population": {"type": "string"}}},  # a clash
    }
    out = complete(spec, keyed=False)
    schema = out["paths"]["/x"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert "$defs" not in schema
    target = schema["properties"]["population"]["$ref"]
    assert target == "#/components/schemas/Population2"
    assert out["components"]["schemas"]["Population2"]["properties"]["n"] == {"type": "integer"}
    assert out["components"]["schemas"]["Population"] == {"type": "string"}
    validate(out)


# --- live answers against their documented schemas ------------------------------------------


class Checker:
    """Validates an answer against the schema the spec documents for its status and type."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec

    def check(self, method: str, path: str, response: Any) -> Any:
        documented = self.spec["paths"][path][method]["responses"][str(response.status_code)]
        media = response.headers["content-type"].split(";")[0]
        schema = documented["content"][media]["schema"]
        # References are "#/components/...": resolve them against a root that has components.
        root = {**schema, "components": self.spec["components"]}
        Draft202012Validator(root).validate(response.json())
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert name in response.headers, (path, name)
        return response.json()


def test_walk_through_answers_match_their_schemas() -> None:
    app = create_app(Settings(store="memory://", device="cpu"))
    with TestClient(app) as client:
        c = Checker(client.get("/openapi.json").json())
        s = "/v1/sessions/{session_id}"
        created = client.post("/v1/sessions", json={"num_features": 2, "name": "walk"})
        sid = c.check("post", "/v1/sessions", created)["id"]
        base = f"/v1/sessions/{sid}"
        x = {"data": [[1.0, 2.0], [3.0, 5.0], [0.5, None]]}
        c.check("get", "/v1/sessions", client.get("/v1/sessions?limit=1"))
        c.check("get", s, client.get(base))
        c.check("post", f"{s}/fit", client.post(f"{base}/fit", json={"data": x["data"][:2]}))
        c.check(
            "post",
            f"{s}/fit",
            client.post(f"{base}/fit?output=false", json={"data": [[1, 2], [3, 4]]}),
        )
        c.check("post", f"{s}/transform", client.post(f"{base}/transform", json=x))
        grads = {"data": [[1, 2], [3, 5]], "grad_output": [[1, 0], [0, 1]]}
        c.check("post", f"{s}/backward", client.post(f"{base}/backward", json=grads))
        c.check("post", f"{s}/fold", client.post(f"{base}/fold", json={"weight": [[1, 2], [3, 4]]}))
        for fmt in ("json", "keras", "onnx"):
            c.check("get", f"{s}/stats", client.get(f"{base}/stats?format={fmt}"))
        c.check("put", f"{s}/stats", client.put(f"{base}/stats", json={"eps": 0.001}))
        c.check("post", f"{s}/reset", client.post(f"{base}/reset"))
        c.check("get", "/v2", client.get("/v2"))
        c.check("get", "/v2/models/{session_id}", client.get(f"/v2/models/{sid}"))
        infer = {
            "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]
        }
        c.check(
            "post",
            "/v2/models/{session_id}/infer",
            client.post(f"/v2/models/{sid}/infer", json=infer),
        )
        c.check("get", "/healthz", client.get("/healthz"))
        c.check("get", "/readyz", client.get("/readyz"))
        for bad in (
            client.get("/v1/sessions/nope"),
            client.post(f"{base}/fit", json={"data": [[1, 2, 3]]}),
            client.post(f"{base}/fit", content=b"{", headers={"content-type": "application/json"}),
        ):
            assert bad.headers["content-type"] == "application/problem+json"
        c.check("get", s, client.get("/v1/sessions/nope"))
        c.check("post", f"{s}/fit", client.post(f"{base}/fit", json={"data": [[1, 2, 3]]}))
        c.check("get", "/v1/sessions", client.get("/v1/sessions?limit=0"))


def test_405_lists_every_method_of_the_path() -> None:
    app = create_app(Settings(store="memory://", device="cpu"))
    with TestClient(app) as client:
        r = client.request("PATCH", "/v1/sessions")
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, POST"
        assert r.headers["content-type"] == "application/problem+json"
        r = client.request("PATCH", "/v1/sessions/abc/stats")
        assert r.headers["allow"] == "GET, PUT"
