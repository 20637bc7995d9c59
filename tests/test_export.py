"""Export: a finished classifier run to ONNX and TorchScript, giving PyTorch's probabilities, with its input
contract; a representation run is refused with a clear message. The runs are conftest's ``finished_runs``, shared
with other modules: export writes only where it is told (``out=``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utils.export import export, main


@pytest.mark.parametrize("name", ["supervised", "ran"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_model_gives_pytorchs_probabilities(finished_runs, name, fmt, tmp_path):
    result = export(finished_runs[name].run_dir, fmt, out=tmp_path / f"model.{fmt}")
    assert result["max_abs_difference"] is not None and result["max_abs_difference"] <= 1e-4
    contract = json.loads(result["contract"].read_text())
    assert contract["classes"] == list(finished_runs[name].method.spec.classes)
    assert contract["input"]["shape"] == ["N", 1, 48, 48] and "255" in contract["input"]["scaling"]
    assert contract["faces"]["size"] == 48 and contract["faces"]["align"] is True


@pytest.mark.parametrize("name", ["supervised", "ran"])
def test_onnx_runs_on_real_faces_of_any_batch_size(finished_runs, sample, tmp_path, name):
    import onnxruntime

    path = export(finished_runs[name].run_dir, "onnx", out=tmp_path / "m.onnx")["model"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    faces = sample.images[sample.split_indices("val")[:5], None].astype(np.float32) / 255
    probs = session.run(None, {"faces": faces})[0]
    assert probs.shape == (5, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(finished_runs[name].model.eval()(torch.from_numpy(faces)), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_a_representation_run_is_refused(finished_runs, tmp_path, capsys):
    with pytest.raises(ValueError, match="fine-tuning run"):
        export(finished_runs["moco_v2"].run_dir, "onnx")
    assert main([str(tmp_path / "nothing"), "--format", "onnx"]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_latency_times_both_runtimes_per_face(finished_runs, tmp_path):
    from utils.export import latency

    path = export(finished_runs["supervised"].run_dir, "onnx", out=tmp_path / "m.onnx")["model"]
    rows = latency(finished_runs["supervised"].run_dir, path, batch_sizes=(1, 4), repeats=2)
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["onnxruntime ms/face"] > 0 and r["pytorch ms/face"] > 0
        assert r["speed-up"] == pytest.approx(r["pytorch ms/face"] / r["onnxruntime ms/face"])
    with pytest.raises(FileNotFoundError, match="utils.export"):
        latency(finished_runs["supervised"].run_dir, tmp_path / "missing.onnx")
