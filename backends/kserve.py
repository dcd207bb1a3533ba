"""KServe V1 and Open Inference Protocol (V2) bodies: parsed into arrays, rendered from predictions.

Parsing is strict and every message says where the problem is (`instances[3][1]: ...`),
because the people reading them are writing a router and its tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from backends.errors import bad_request
from backends.knobs import Prediction
from backends.model import LABELS, N_FEATURES, Floats

MAX_INSTANCES = 10_000
_NUMERIC_TYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_V1_HINT = f'expected a list of {N_FEATURES} numbers or {{"features": [{N_FEATURES} numbers]}}'


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_v1(body: object) -> Floats:
    """`{"instances": [...]}` to an (n, 4) array."""
    if not isinstance(body, dict) or "instances" not in body:
        raise bad_request(f'the body must be a JSON object with "instances": [...], each {_V1_HINT}')
    instances = body["instances"]
    if not isinstance(instances, list) or not 1 <= len(instances) <= MAX_INSTANCES:
        raise bad_request(f'"instances" must be a list of 1 to {MAX_INSTANCES} instances')
    return np.array([_instance(i, item) for i, item in enumerate(instances)], dtype=np.float64)


def _instance(i: int, item: object) -> list[float]:
    features = item.get("features") if isinstance(item, dict) else item
    if not isinstance(features, list) or len(features) != N_FEATURES:
        raise bad_request(f"instances[{i}]: {_V1_HINT}")
    for j, value in enumerate(features):
        if not _is_number(value):
            raise bad_request(f"instances[{i}][{j}]: {value!r} is not a finite number")
    return features


@dataclass(frozen=True)
class V2Request:
    """The one input tensor of an infer request, and the request id if the client sent one."""

    x: Floats
    id: str | None


def parse_v2(body: object) -> V2Request:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or len(body["inputs"]) != 1:
        raise bad_request('the body must be a JSON object with "inputs": [one tensor]')
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise bad_request("inputs[0] must be an object with name, shape, datatype and data")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request('"id" must be a string')
    return V2Request(_tensor(tensor), request_id)


def _tensor(tensor: dict[str, Any]) -> Floats:
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if not isinstance(tensor.get("name"), str):
        raise bad_request("inputs[0].name must be a string")
    if datatype not in _NUMERIC_TYPES:
        raise bad_request(f"inputs[0].datatype must be one of {', '.join(sorted(_NUMERIC_TYPES))}; got {datatype!r}")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(type(d) is int for d in shape)
            or not 1 <= shape[0] <= MAX_INSTANCES or shape[1] != N_FEATURES):
        raise bad_request(f"inputs[0].shape must be [n, {N_FEATURES}] with 1 <= n <= {MAX_INSTANCES}; got {shape!r}")
    flat = _flatten(tensor.get("data"))
    if len(flat) != shape[0] * N_FEATURES:
        raise bad_request(f"inputs[0].data holds {len(flat)} numbers but shape {shape} needs {shape[0] * N_FEATURES}")
    return np.array(flat, dtype=np.float64).reshape(shape[0], N_FEATURES)


def _flatten(data: object) -> list[float]:
    """Row-major data, flat or nested to any depth, as one list of numbers."""
    if not isinstance(data, list):
        raise bad_request("inputs[0].data must be a list of numbers (flat or nested)")
    flat: list[float] = []
    stack: list[object] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))  # reversed so items pop in their original order
        elif _is_number(item):
            flat.append(item)
        else:
            raise bad_request(f"inputs[0].data: {item!r} is not a finite number")
    return flat


def render_v1(pred: Prediction, name: str, version: str) -> dict[str, Any]:
    scores = np.round(pred.scores, 6).tolist()
    predictions: list[dict[str, Any]] = [{"label": lb, "scores": s} for lb, s in zip(pred.labels, scores, strict=True)]
    if pred.extra is not None:
        field, values = pred.extra
        for item, value in zip(predictions, values, strict=True):
            item[field] = value
    return {"predictions": predictions, "model_name": name, "model_version": version}


def render_v2(pred: Prediction, name: str, version: str, request_id: str) -> dict[str, Any]:
    n = len(pred.labels)
    outputs: list[dict[str, Any]] = [
        {"name": "scores", "shape": [n, len(LABELS)], "datatype": "FP32",
         "data": pred.scores.astype(np.float32).ravel().tolist()},
        {"name": "label", "shape": [n], "datatype": "BYTES", "data": pred.labels},
    ]
    if pred.extra is not None:
        field, values = pred.extra
        outputs.append({"name": field, "shape": [n], "datatype": "BYTES", "data": values})
    return {"model_name": name, "model_version": version, "id": request_id, "outputs": outputs}


def metadata_v1(name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version, "ready": True, "labels": list(LABELS)}


def metadata_v2(name: str, version: str) -> dict[str, Any]:
    return {
        "name": name, "versions": [version], "platform": "numpy",
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, len(LABELS)]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]}],
    }
