"""KernelSHAP, occlusion, adaptive sampling and the result cache under a real TorchServe: through the
service's TorchServe backend (whose masked batches need no handler support for a method) and on the
handler's REST ``/explanations``."""

from __future__ import annotations

import base64
import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from skimage import data

import layermask
from layermask.models.images import decode_image
from layermask_service.client import ExplainClient, explain_request
from layermask_service.proto import explain_pb2 as pb
from layermask_service.result_cache import weights_digest
from layermask_service.torchserve.process import TorchServeProcess
from tests.helpers.service import LOOPBACK, RunningServer, png_bytes
from tests.helpers.torchserve import MODEL

CHELSEA = png_bytes(data.chelsea())
GRID_16: dict[str, Any] = {"segmentation": "grid", "segmentation_params": {"patch_size": 56}}
OCCLUSION = {"window": 56, "stride": 42}


def _assert_same_weights(weights: list[list[float]], local: layermask.Explanation) -> None:
    assert len(weights) == len(local.labels)
    for got, label in zip(weights, local.labels):
        np.testing.assert_allclose(got, local.explanations[label].weights, rtol=0, atol=1e-5)


def test_kernel_shap_and_occlusion_through_the_torchserve_backend(torchserve: TorchServeProcess,
                                                                  default_model: layermask.LoadedModel) -> None:
    server = RunningServer(dataclasses.replace(LOOPBACK, backend="torchserve",
                                               torchserve_target=torchserve.grpc_target))
    try:
        # The handler digests the weights it serves (model_info): the same digest as the embedded model's.
        assert server.server.backend.digests == {MODEL: weights_digest(default_model)}
        with ExplainClient(server.target, timeout=120) as client:
            for method, extra in (("kernel_shap", {"num_samples": 24, **GRID_16}),
                                  ("occlusion", {"occlusion": OCCLUSION})):
                request = explain_request(CHELSEA, method=method, seed=3, masking="grey", **extra)
                response = client.explain(request)
                local = layermask.explain(default_model, decode_image(CHELSEA), method=method, seed=3,
                                          masking="grey", **extra)
                assert response.method == pb.Method.Value(f"METHOD_{method.upper()}")
                assert response.num_samples == local.num_samples
                _assert_same_weights([list(e.weights) for e in response.explanations], local)
                # A repeat comes from the service's cache, not from TorchServe.
                sent = server.metric("layermask_backend_request_bytes_total", model=MODEL)
                assert client.explain(request).SerializeToString() == response.SerializeToString()
                assert server.metric("layermask_backend_request_bytes_total", model=MODEL) == sent
        assert server.metric("layermask_cache_hits_total") == 2
    finally:
        server.stop()


def _explain_rest(torchserve: TorchServeProcess, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{torchserve.inference_url}/explanations/{MODEL}",
                                     data=json.dumps({"image": base64.b64encode(CHELSEA).decode(), **body}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_rest_explanations_take_method_occlusion_and_auto(torchserve: TorchServeProcess,
                                                           default_model: layermask.LoadedModel) -> None:
    status, occluded = _explain_rest(torchserve, {"method": "occlusion", "occlusion": OCCLUSION, "masking": "grey"})
    assert status == 200, occluded
    local = layermask.explain(default_model, decode_image(CHELSEA), method="occlusion", occlusion=OCCLUSION,
                              masking="grey")
    assert occluded["method"] == "METHOD_OCCLUSION" and occluded["occlusion"] == OCCLUSION
    assert occluded["segmentation"] == "occlusion" and occluded["num_samples"] == local.num_samples
    _assert_same_weights([e["weights"] for e in occluded["explanations"]], local)

    adaptive = {"batch": 16, "max_samples": 32}
    status, auto = _explain_rest(torchserve, {"method": "METHOD_LIME", "num_samples": "auto", "adaptive": adaptive,
                                              "seed": 5, **{"segmentation": {"grid": {"patch_size": 56}}}})
    assert status == 200, auto
    local = layermask.explain(default_model, decode_image(CHELSEA), num_samples="auto", adaptive=adaptive, seed=5,
                              **GRID_16)
    assert auto["method"] == "METHOD_LIME" and auto["num_samples"] == local.num_samples
    assert auto["converged"] == local.converged
    _assert_same_weights([e["weights"] for e in auto["explanations"]], local)

    status, refused = _explain_rest(torchserve, {"method": "occlusion", "num_samples": "auto"})
    assert status == 400 and refused["message"].startswith("num_samples: 0 (adaptive) works for METHOD_LIME")
