"""The OpenAPI schema's parts that FastAPI cannot see: bodies routes parse themselves and the plain GET route."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from u2qt.service.schemas import HistoryPath, HistoryQuery, HistoryResponse


def document_routes(app: FastAPI, *bodies: type[BaseModel]) -> None:
    """Completes the OpenAPI schema with what FastAPI cannot see: the schemas of bodies that routes parse
    themselves (json_body) and the plain route GET /users/{user_id}/tokens."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model, mode in [*((b, "validation") for b in bodies), (HistoryResponse, "serialization")]:
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
            json_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/HistoryResponse"}}}
            errors = {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}
            spec["paths"].setdefault("/users/{user_id}/tokens", {})["get"] = {
                "tags": ["tokens"],
                "summary": "User Tokens",
                "description": "A user's token history in time order, from the model version this service serves.",
                "operationId": "user_tokens",
                "parameters": params,
                "responses": {
                    "200": {"description": "Successful Response", "content": json_ref},
                    "422": {"description": "Validation Error", "content": errors},
                },
            }
        return app.openapi_schema

    app.openapi = openapi
