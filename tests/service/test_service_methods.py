"""``method``, adaptive sample counts and occlusion in the v1 API: translation, errors in the proto's
terms, the JSON form the handler reads, and each method over real loopback gRPC (embedded backend)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from skimage import data

import layermask
from layermask import ExplainOptions
from layermask.explanation.options import AdaptiveSampling, OcclusionWindow
from layermask.models.images import decode_image
from layermask_service.cli import main
from layermask_service.client import ExplainClient, explain_request
from layermask_service.errors import InvalidArgument
from layermask_service.methods import METHOD_ENUMS, METHOD_NAMES, check_occlusion_rows
from layermask_service.proto import explain_pb2 as pb
from layermask_service.translate import explain_job, explain_request_from_json, segments_from
from tests.helpers.service import RunningServer, png_bytes

CHELSEA = png_bytes(data.chelsea())
GRID_16: dict[str, Any] = {"segmentation": "grid", "segmentation_params": {"patch_size": 56}}
"""16 segments on a 224² crop."""


def _options(**fields: Any) -> ExplainOptions:
    return explain_job(pb.ExplainRequest(image=CHELSEA, **fields), "m", max_samples=20_000).options


def test_every_core_method_has_a_proto_enum_value_and_back() -> None:
    assert set(METHOD_ENUMS) == set(layermask.explanation.options.METHODS)
    for name, value in METHOD_ENUMS.items():
        assert METHOD_NAMES[value] == name and pb.Method.Name(value) == f"METHOD_{name.upper()}"
    assert set(METHOD_NAMES) == set(pb.Method.values())
    assert METHOD_NAMES[pb.METHOD_UNSPECIFIED] == ExplainOptions().method == "lime"


def test_method_and_its_parameters_reach_the_options() -> None:
    assert _options() == ExplainOptions() and _options().num_samples == 1000  # unset: 1000, not adaptive
    occlusion = _options(method=pb.METHOD_OCCLUSION, occlusion=pb.Occlusion(window=24))
    assert occlusion == ExplainOptions(method="occlusion", occlusion=OcclusionWindow(window=24, stride=16))
    adaptive = _options(method=pb.METHOD_KERNEL_SHAP, num_samples=0, adaptive=pb.Adaptive(tolerance=0.95, batch=32))
    assert adaptive == ExplainOptions(method="kernel_shap", num_samples="auto",
                                      adaptive=AdaptiveSampling(tolerance=0.95, batch=32))
    assert _options(num_samples=0).adaptive == AdaptiveSampling()


@pytest.mark.parametrize(("fields", "message"), [
    ({"num_samples": 1}, "num_samples: must be 0 (adaptive) or at least 2, got 1"),
    ({"num_samples": -5}, "num_samples: must be 0 (adaptive) or at least 2, got -5"),
    ({"num_samples": 0, "method": pb.METHOD_OCCLUSION},
     "num_samples: 0 (adaptive) works for METHOD_LIME and METHOD_KERNEL_SHAP, not METHOD_OCCLUSION"),
    ({"adaptive": pb.Adaptive(batch=8)}, "adaptive: applies only with num_samples = 0"),
    ({"num_samples": 0, "adaptive": pb.Adaptive(tolerance=1.5)}, "adaptive.tolerance: must be in (0, 1]"),
    ({"num_samples": 0, "adaptive": pb.Adaptive(batch=64, max_samples=32)},
     "adaptive.max_samples: must be at least adaptive.batch (64), got 32"),
    ({"num_samples": 0, "adaptive": pb.Adaptive(max_samples=1500)},
     "adaptive.max_samples: must be at most 1000 on this server, got 1500"),
    ({"num_samples": 0}, "adaptive.max_samples: must be at most 1000 on this server, got 2000"),
    ({"occlusion": pb.Occlusion(window=8)}, "occlusion: applies only with method = METHOD_OCCLUSION, not METHOD_LIME"),
    ({"method": pb.METHOD_OCCLUSION, "occlusion": pb.Occlusion(window=0)}, "occlusion.window: must be a positive"),
    ({"method": pb.METHOD_OCCLUSION, "occlusion": pb.Occlusion(stride=-2)}, "occlusion.stride: must be a positive"),
    ({"method": 9}, "method: unknown method 9"),
])
def test_a_bad_field_is_named_in_the_protos_terms(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        explain_job(pb.ExplainRequest(image=CHELSEA, **fields), "m", max_samples=1000)
    assert str(raised.value).startswith(message)


def test_occlusion_windows_count_against_the_servers_sample_limit() -> None:
    fine = _options(method=pb.METHOD_OCCLUSION, occlusion=pb.Occlusion(window=32, stride=16))
    check_occlusion_rows(fine, (224, 224), max_samples=170)  # 13 × 13 windows and the unmasked image
    with pytest.raises(InvalidArgument, match=r"^occlusion.stride: 16 with window 32 scores 170 rows on the model's "
                                              r"224×224 input, more than this server's limit of 169"):
        check_occlusion_rows(fine, (224, 224), max_samples=169)
    check_occlusion_rows(_options(), (224, 224), max_samples=2)  # other methods: num_samples is the limit


def test_json_requests_take_the_python_spellings_too() -> None:
    image = base64.b64encode(CHELSEA).decode()
    python = explain_request_from_json({"image": image, "method": "kernel_shap", "num_samples": "auto",
                                        "adaptive": {"tolerance": 0.9, "max_samples": 256}, "masking": "grey"})
    assert python == pb.ExplainRequest(image=CHELSEA, method=pb.METHOD_KERNEL_SHAP, num_samples=0,
                                       adaptive=pb.Adaptive(tolerance=0.9, max_samples=256), masking=pb.MASKING_GREY)
    proto = explain_request_from_json({"image": image, "method": "METHOD_OCCLUSION", "occlusion": {"window": 48},
                                       "numSamples": "auto"})
    assert proto == pb.ExplainRequest(image=CHELSEA, method=pb.METHOD_OCCLUSION, num_samples=0,
                                      occlusion=pb.Occlusion(window=48))
    with pytest.raises(json_format.ParseError, match="method"):
        explain_request_from_json({"image": image, "method": "shapley"})


# ------------------------------------------------------------------- over gRPC
@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[ExplainClient]:
    with ExplainClient(server.target, timeout=300) as c:
        yield c


@pytest.mark.parametrize(("method", "extra"), [
    ("lime", {"num_samples": 32}),
    ("kernel_shap", {"num_samples": 32}),
    ("occlusion", {"occlusion": {"window": 56, "stride": 42}}),
])
def test_each_method_over_grpc_equals_the_in_process_result(client: ExplainClient,
                                                            default_model: layermask.LoadedModel,
                                                            method: str, extra: dict[str, Any]) -> None:
    response = client.explain(explain_request(CHELSEA, method=method, seed=4, masking="grey",
                                              heatmap_format=pb.HEATMAP_FORMAT_FLOAT16, **GRID_16, **extra))
    local = layermask.explain(default_model, decode_image(CHELSEA), method=method, seed=4, masking="grey",
                              **GRID_16, **extra)
    assert response.method == METHOD_ENUMS[method] and not response.HasField("converged")
    assert response.num_samples == local.num_samples and response.segmentation == local.segmentation
    assert [e.label for e in response.explanations] == local.labels
    for message in response.explanations:
        np.testing.assert_array_equal(message.weights, local.explanations[message.label].weights)
    np.testing.assert_array_equal(segments_from(response.segments), local.segments)
    heatmap = np.frombuffer(response.heatmaps[0].data, dtype="<f2").reshape(224, 224)
    np.testing.assert_allclose(heatmap, local.heatmap(local.labels[0]), atol=1e-3)
    assert response.HasField("occlusion") == (method == "occlusion")
    if method == "occlusion":
        assert (response.occlusion.window, response.occlusion.stride) == (56, 42)
        assert response.num_samples == 1 + 5 * 5  # windows at 0, 42, 84, 126, 168 per side, and the unmasked image


def test_adaptive_over_grpc_reports_samples_used_and_convergence(server: RunningServer, client: ExplainClient,
                                                                 default_model: layermask.LoadedModel) -> None:
    adaptive = {"batch": 16, "max_samples": 96}
    labels = {"method": "kernel_shap", "sampling": "adaptive"}
    count, total = (server.metric(f"layermask_samples_used_{part}", **labels) for part in ("count", "sum"))
    response = client.explain(explain_request(CHELSEA, method="kernel_shap", num_samples="auto", adaptive=adaptive,
                                              seed=2, **GRID_16))
    local = layermask.explain(default_model, decode_image(CHELSEA), method="kernel_shap", num_samples="auto",
                              adaptive=adaptive, seed=2, **GRID_16)
    assert response.HasField("converged") and response.converged == local.converged
    assert response.num_samples == local.num_samples <= 96
    np.testing.assert_array_equal(response.explanations[0].weights, local.explanations[local.labels[0]].weights)
    assert server.metric("layermask_samples_used_count", **labels) == count + 1
    assert server.metric("layermask_samples_used_sum", **labels) == total + response.num_samples


def test_client_cli_takes_method_and_auto(server: RunningServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "chelsea.png"
    photo.write_bytes(CHELSEA)
    common = ["client", "explain", str(photo), "--target", server.target, "-o", str(tmp_path / "out.png")]
    assert main([*common, "--method", "occlusion", "--json", str(tmp_path / "out.json")]) == 0
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["method"] == "METHOD_OCCLUSION" and written["occlusion"] == {"window": 32, "stride": 16}
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert main([*common, "--method", "occlusion", "--samples", "auto"]) == 2  # sent as num_samples = 0
    assert "num_samples: 0 (adaptive) works for METHOD_LIME and METHOD_KERNEL_SHAP" in capsys.readouterr().err
