"""The server's OpenAPI 3 description, served at ``/openapi.json`` and fuzzed by the tests.

Written out by hand rather than generated: the binary tensor extension and image bodies do
not fit a framework's schema inference, and a fuzzer is only as good as the contract it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from m2pt_deploy.serving.protocol import DATATYPES

__all__ = ["openapi_document"]

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_TENSOR_META = {
    "type": "object", "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                   "shape": {"type": "array", "items": {"type": "integer"}}},
}
_PARAMETERS = {"type": "object", "additionalProperties": True}
_INFER_REQUEST = {
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": list(DATATYPES)},
                "parameters": _PARAMETERS,
                "data": {"type": "array"},
            },
        }},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
        }},
    },
}
_INFER_RESPONSE = {
    "type": "object", "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name", "datatype", "shape"],
            "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                           "shape": {"type": "array", "items": {"type": "integer"}},
                           "data": {"type": "array"}, "parameters": _PARAMETERS},
        }},
    },
}
_MODEL_METADATA = {
    "type": "object", "required": ["name", "platform", "inputs", "outputs"],
    "properties": {"name": {"type": "string"},
                   "versions": {"type": "array", "items": {"type": "string"}},
                   "platform": {"type": "string"},
                   "inputs": {"type": "array", "items": _TENSOR_META},
                   "outputs": {"type": "array", "items": _TENSOR_META},
                   "parameters": _PARAMETERS},
}
_DURATION = {"type": "object", "required": ["count", "ns"],
             "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}}}
_STATISTICS = {
    "type": "object", "required": ["model_stats"],
    "properties": {"model_stats": {"type": "array", "items": {
        "type": "object",
        "required": ["name", "version", "last_inference", "inference_count", "execution_count",
                     "inference_stats", "batch_stats"],
        "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "last_inference": {"type": "integer"}, "inference_count": {"type": "integer"},
            "execution_count": {"type": "integer"},
            "inference_stats": {"type": "object", "additionalProperties": _DURATION},
            "batch_stats": {"type": "array", "items": {
                "type": "object", "required": ["batch_size"],
                "properties": {"batch_size": {"type": "integer"}, "compute_input": _DURATION,
                               "compute_infer": _DURATION, "compute_output": _DURATION}}},
        },
    }}},
}
_INDEX = {"type": "array", "items": {
    "type": "object", "required": ["name", "state"],
    "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                   "state": {"type": "string"}, "reason": {"type": "string"}}}}
_CLASSIFY_RESPONSE = {
    "type": "object", "required": ["model_name", "classes"],
    "properties": {"model_name": {"type": "string"}, "classes": {"type": "array", "items": {
        "type": "object", "required": ["index", "score"],
        "properties": {"index": {"type": "integer"}, "label": {"type": "string", "nullable": True},
                       "score": {"type": "number"}},
    }}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {400: "malformed request", 401: "missing or wrong API key", 404: "unknown model",
               408: "upload stalled or too slow", 413: "body too large", 415: "compressed body",
               503: "overloaded or shutting down", 504: "request timed out"}
    return {str(c): _json(_ERROR, reasons[c]) for c in codes}


def _get(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    return {"get": {"responses": {"200": ok, **_errors(*codes)}}}


def openapi_document(model_names: Sequence[str]) -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "enum": list(model_names)}}
    models = "/v2/models/{name}"

    def flag(key: str, *required: str) -> dict[str, Any]:
        schema = {"type": "object", "required": [*required, key],
                  "properties": {key: {"type": "boolean"}, **{r: {"type": "string"} for r in required}}}
        return _json(schema, f"{{{key!r}: bool}}")
    return {
        "openapi": "3.0.3",
        "info": {"title": "m2pt-serve", "version": "2",
                 "description": "KServe v2 inference protocol (Triton flavour) over ONNX Runtime"},
        "paths": {
            "/v2": _get(_json({"type": "object"}, "server metadata")),
            "/v2/health/live": _get(flag("live")),
            "/v2/health/ready": {"get": {"responses": {"200": flag("ready"), "503": flag("ready")}}},
            models: {"parameters": [name], **_get(_json(_MODEL_METADATA, "model metadata"), 404)},
            f"{models}/ready": {"parameters": [name], "get": {"responses": {
                "200": flag("ready", "name"), "503": flag("ready", "name"), **_errors(404)}}},
            f"{models}/stats": {"parameters": [name],
                                **_get(_json(_STATISTICS, "the statistics extension"), 404)},
            "/v2/models/stats": _get(_json(_STATISTICS, "every model's statistics")),
            "/v2/repository/index": {"post": {
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"ready": {"type": "boolean"}}}}}},
                "responses": {"200": _json(_INDEX, "the repository's models"), **_errors(400, 408, 413)},
            }},
            **{f"/v2/repository/models/{{name}}/{action}": {"parameters": [name], "post": {
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"parameters": _PARAMETERS}}}}},
                "responses": {"200": _json({"type": "object", "required": ["name", action]},
                                           f"model {action}ed"),
                              **_errors(400, 404, 408, 413, 503)},
            }} for action in ("load", "unload")},
            f"{models}/config": {"parameters": [name],
                                 **_get(_json({"type": "object"}, "Triton-style config"), 404)},
            f"{models}/infer": {"parameters": [name], "post": {
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _INFER_REQUEST}}},
                "responses": {"200": _json(_INFER_RESPONSE, "outputs"),
                              **_errors(400, 404, 408, 413, 415, 503, 504)},
            }},
            f"{models}/classify": {"parameters": [name], "post": {
                "parameters": [{"name": "top_k", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1}}],
                "requestBody": {"required": True, "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                }},
                "responses": {"200": _json(_CLASSIFY_RESPONSE, "top-k classes"),
                              **_errors(400, 404, 408, 413, 415, 503, 504)},
            }},
            "/metrics": _get({"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}),
        },
    }
