"""The OpenAPI document is valid and true: every operation is fuzzed from it (schemathesis,
in-process against the Flask app), as an administrator with a bearer token and anonymously.
No answer may be a 5xx, use an undeclared status or content type, or break its schema;
data that breaks the schema must be refused."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flask_aaa.config import Settings
from flask_aaa.web import openapi
from tests.api.conftest import API

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_document_is_valid_openapi_3_1(client):
    document = client.get(f"{API}/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": API}]
    try:
        from openapi_spec_validator import validate
    except ImportError:
        # schemathesis validates against the OpenAPI 3.1 meta-schema itself.
        schemathesis.openapi.from_dict(document).validate()
    else:
        validate(document)
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"bearerAuth", "sessionCookie", "csrfHeader"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if path != "/openapi.json":
                assert {"400", "401", "403", "429", "503"} <= codes, (method, path)
            if method != "get":
                assert {"409", "413"} <= codes, (method, path)
            body = operation.get("requestBody")
            if body is not None:
                ref = body["content"]["application/json"]["schema"]["$ref"]
                schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
                assert schema["additionalProperties"] is False, (method, path)


def test_every_route_of_the_blueprint_is_documented(app, client):
    document = client.get(f"{API}/openapi.json").get_json()
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("aaa_api."):
            path = rule.rule.removeprefix(API)
            for name in rule.arguments:
                path = path.replace(f"<int:{name}>", f"{{{name}}}")
                path = path.replace(f"<{name}>", f"{{{name}}}")
            routed |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert routed == documented


DOCUMENT = openapi.build(Settings.from_config({}, debug=False, testing=True))
OPERATIONS = [(method, path) for path, item in DOCUMENT["paths"].items() for method in item]
#: Negative cases need something to break: a parameter or a body.
ADMIN_CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode.is_positive
    or DOCUMENT["paths"][path][method].get("parameters")
    or "requestBody" in DOCUMENT["paths"][path][method]
]


def fuzz(
    app: Flask,
    method: str,
    path: str,
    mode: GenerationMode,
    examples: int,
    check: Any = None,
    **call: Any,
) -> None:
    """Run ``examples`` generated cases of one operation against ``app`` and check each.

    (Driven by hand rather than through ``schema.parametrize()``: schemathesis's lazy
    fixture loader does not work with pytest 9, and the app is a per-test fixture.)"""
    schema = schemathesis.openapi.from_wsgi(f"{API}/openapi.json", app)
    operation = schema[path][method.upper()]

    @settings(FUZZ, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call_and_validate(checks=CHECKS, **call)
        if check is not None:
            check(response, path)

    run()


@pytest.fixture
def admin_secret(admin, token_for) -> str:
    scopes = ["*"]
    return str(token_for(admin, scopes, name="fuzzer"))


@pytest.mark.parametrize(("method", "path", "mode"), ADMIN_CASES)
def test_fuzz_as_admin(app, admin_secret, method, path, mode):
    headers = {"Authorization": f"Bearer {admin_secret}"}
    fuzz(app, method, path, mode, 20 if mode.is_positive else 12, headers=headers)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_fuzz_anonymously(app, method, path):
    """Nobody signed in: every operation but the document itself is refused."""
    fuzz(app, method, path, GenerationMode.POSITIVE, 6, check=refused_unless_public)


def refused_unless_public(response: Any, path: str) -> None:
    if path != "/openapi.json":
        assert response.status_code in (400, 401, 404), response.text
