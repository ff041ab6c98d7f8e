"""The OpenAPI schema's parts that FastAPI cannot see: bodies routes parse themselves, the plain GET route and
POST /tokenize (served ahead of FastAPI's router, service/write_routes.py)."""

from __future__ import annotations

import inspect

from fastapi import FastAPI
from pydantic import BaseModel

from u2qt.service.schemas import HistoryPath, HistoryQuery, HistoryResponse, TokenizeResponse


def document_routes(app: FastAPI, tokenize, *bodies: type[BaseModel]) -> None:
    """Completes the OpenAPI schema with what FastAPI cannot see: the schemas of bodies that routes parse
    themselves (json_body), the plain route GET /users/{user_id}/tokens and POST /tokenize (`tokenize`: its
    function, whose docstring describes it)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            answers = [(HistoryResponse, "serialization"), (TokenizeResponse, "serialization")]
            for model, mode in [*((b, "validation") for b in bodies), *answers]:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            params = [
                {
                    "name": name,
                    "in": where,
                    "required": where == "path",
                    "description": schema.pop("description", ""),
                    "schema": schema,
                }
                for model, where in ((HistoryPath, "path"), (HistoryQuery, "query"))
                for name, schema in model.model_json_schema(ref_template="#/components/schemas/{model}")[
                    "properties"
                ].items()
            ]

            def json_ref(name: str) -> dict:
                return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

            errors = json_ref("HTTPValidationError")
            spec["paths"].setdefault("/tokenize", {})["post"] = {
                "tags": ["tokens"],
                "summary": "Tokenize",
                "description": inspect.getdoc(tokenize),
                "operationId": "tokenize",
                "requestBody": {"required": True, "content": json_ref("TokenizeRequest")},
                "responses": {
                    "200": {"description": "Successful Response", "content": json_ref("TokenizeResponse")},
                    "422": {"description": "Validation Error", "content": errors},
                },
            }
            spec["paths"].setdefault("/users/{user_id}/tokens", {})["get"] = {
                "tags": ["tokens"],
                "summary": "User Tokens",
                "description": "A user's token history in time order, from the model version this service serves.",
                "operationId": "user_tokens",
                "parameters": params,
                "responses": {
                    "200": {"description": "Successful Response", "content": json_ref("HistoryResponse")},
                    "422": {"description": "Validation Error", "content": errors},
                },
            }
        return app.openapi_schema

    app.openapi = openapi
