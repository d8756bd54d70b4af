"""Drive m2pt-serve with KServe's own Python SDK (``InferenceRESTClient``, ``InferenceGRPCClient``).

Run by ``test_kserve_sdk.py`` in a child process whose ``PYTHONPATH`` is ``.venv/kserve`` (KServe
with its own pinned dependencies, installed apart, as the real tritonserver is): KServe's
``grpc_predict_v2`` stubs define the same ``inference.*`` protobuf names as tritonclient's, which
cannot share one process. Usage::

    python kserve_sdk_probe.py HTTP_URL GRPC_TARGET INPUTS.npz OUTPUTS.npz
    python kserve_sdk_probe.py --isvc MANIFEST.yaml...

``INPUTS.npz`` holds ``x`` (FP32 pixels); every output array goes to ``OUTPUTS.npz`` and every
other observation is printed as one JSON object on stdout. ``--isvc`` checks each manifest against
the SDK's ``V1beta1InferenceService`` model, strictly: every key must be a field of its model
(KServe's or Kubernetes'), every value of the field's type, and each model is built through its
validating setters; it prints ``{file: [problem, ...]}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np


def _request(x: np.ndarray, *, binary: bool, model: str = "vit", binary_output: bool = False) -> Any:
    from kserve import InferInput, InferRequest

    tensor = InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id="kserve-probe",
                        parameters={"binary_data_output": True} if binary_output else None)


async def _rest(url: str, x: np.ndarray, seen: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    import httpx
    from kserve import InferenceRESTClient, RESTConfig

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        seen["rest_live"] = await client.is_server_live(url)
        seen["rest_ready"] = await client.is_server_ready(url)
        seen["rest_model_ready"] = await client.is_model_ready(url, "vit")
        seen["rest_unknown_model_ready"] = await client.is_model_ready(url, "nope")
        for kind, binary, binary_output in (("json", False, False), ("binary", True, True)):
            result = await client.infer(url, _request(x, binary=binary, binary_output=binary_output),
                                        model_name="vit")
            seen[f"rest_{kind}_model"] = result.model_name
            seen[f"rest_{kind}_id"] = result.id
            arrays[f"rest_{kind}"] = result.get_output_by_name("logits").as_numpy()
        for kind, request, model in (("unknown_model", _request(x, binary=False, model="nope"), "nope"),
                                     ("bad_shape", _request(x[:, :, :16], binary=True), "vit")):
            try:
                await client.infer(url, request, model_name=model)
                seen[f"rest_{kind}"] = "accepted"
            except httpx.HTTPStatusError as e:
                seen[f"rest_{kind}"] = [e.response.status_code, str(e)]
    finally:
        await client.close()


async def _grpc(target: str, x: np.ndarray, seen: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    import grpc
    from kserve import InferenceGRPCClient

    async with InferenceGRPCClient(target, timeout=30) as client:
        seen["grpc_live"] = await client.is_server_live()
        seen["grpc_ready"] = await client.is_server_ready()
        seen["grpc_model_ready"] = await client.is_model_ready("vit")
        result = await client.infer(_request(x, binary=True))
        seen["grpc_model"] = result.model_name
        arrays["grpc"] = result.get_output_by_name("logits").as_numpy()
        for kind, request in (("unknown_model", _request(x, binary=True, model="nope")),
                              ("bad_shape", _request(x[:, :, :16], binary=True))):
            try:
                await client.infer(request)
                seen[f"grpc_{kind}"] = "accepted"
            except grpc.aio.AioRpcError as e:
                seen[f"grpc_{kind}"] = [e.code().name, e.details()]


def _model_class(name: str) -> Any:
    import kserve.models
    import kubernetes.client.models

    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(name)


def _build(value: Any, kind: str, where: str, problems: list[str]) -> Any:
    """``value`` as the SDK type ``kind`` (``str``, ``list[T]``, ``dict(str, T)``, a model name)."""
    simple = {"str": str, "bool": bool, "int": int, "float": (int, float), "object": object}
    if kind in simple:
        if not isinstance(value, simple[kind]) or (kind == "int" and isinstance(value, bool)):
            problems.append(f"{where}: {value!r} is not {kind}")
        return value
    # the generators spell containers list[T] / List[T] and dict(str, T) / Dict[str, T]
    if kind[:5].lower() == "list[":
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list")
            return None
        return [_build(v, kind[5:-1], f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if kind[:5].lower() in ("dict(", "dict["):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping")
            return None
        inner = kind[5:-1].split(",", 1)[1].strip()
        return {k: _build(v, inner, f"{where}.{k}", problems) for k, v in value.items()}
    klass = _model_class(kind)
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a {kind} mapping")
        return None
    fields = {json_key: attr for attr, json_key in klass.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        if key not in fields:
            problems.append(f"{where}.{key}: not a field of {kind}")
            continue
        kwargs[fields[key]] = _build(v, klass.openapi_types[fields[key]], f"{where}.{key}", problems)
    try:
        return klass(**kwargs)
    except (ValueError, TypeError) as e:
        problems.append(f"{where}: {kind} refuses it: {e}")
        return None


def check_manifests(paths: list[str]) -> dict[str, list[str]]:
    import yaml

    report = {}
    for path in paths:
        with open(path) as f:
            doc = yaml.safe_load(f)
        problems: list[str] = []
        _build(doc, "V1beta1InferenceService", "InferenceService", problems)
        report[path] = problems
    return report


def main(argv: list[str]) -> int:
    if argv[:1] == ["--isvc"]:
        print(json.dumps(check_manifests(argv[1:])))
        return 0
    url, target, inputs, outputs = argv
    import kserve

    x = np.load(inputs)["x"]
    seen: dict[str, Any] = {"kserve": kserve.__file__}
    arrays: dict[str, np.ndarray] = {}
    asyncio.run(_rest(url, x, seen, arrays))
    asyncio.run(_grpc(target, x, seen, arrays))
    np.savez(outputs, **arrays)
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
