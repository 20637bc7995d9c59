"""Export a finished classifier run for use outside the suite: ``python -m utils.export RUN_DIR --format onnx``.

The exported model takes a batch of prepared faces, ``(N, C, S, S)`` float32 with values in [0, 1] (grey, and
a heatmap channel when the run used one), and returns class probabilities ``(N, K)``. Beside it,
``<name>.json`` holds the input contract: size, channels, scaling, the class order, and how faces must be
prepared (detector, alignment, size) to match what the model was trained on. Formats: ``onnx`` (checked
with ONNX Runtime when it is installed) and ``torchscript``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

FORMATS = ("onnx", "torchscript")


class Probabilities(nn.Module):
    """A classifier followed by a softmax: the exported graph."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x).float(), dim=1)


def contract(run) -> dict:
    """The input contract of a run's classifier: what a face must look like when it reaches the model."""
    spec = run.method.spec
    faces = run.record.get("dataset", {}).get("faces", {})
    return {
        "input": {
            "shape": ["N", spec.in_channels, spec.input_size, spec.input_size],
            "dtype": "float32",
            "channels": run.method.config.channels,
            "scaling": "pixel values / 255 (0..1); no mean or std subtracted",
            "layout": "NCHW",
        },
        "output": {"shape": ["N", len(spec.classes)], "meaning": "class probabilities (softmax)"},
        "classes": list(spec.classes),
        "faces": faces,
        "run": run.record.get("run"),
        "method": run.record.get("method"),
        "protocol": run.record.get("protocol"),
    }


def export(folder, fmt: str = "onnx", out=None, check: bool = True) -> dict:
    """Export the classifier of the finished run in ``folder``.

    Args:
        fmt: ``onnx`` or ``torchscript``.
        out: the model file (default ``<folder>/model.onnx`` or ``model.torchscript.pt``).
        check: compare the exported model's probabilities with PyTorch's on random faces.

    Returns:
        ``{"model": path, "contract": path, "max_abs_difference": float | None}``.
    """
    from utils.core.runs import load_run

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    run = load_run(folder, device="cpu")
    if run.method.kind != "classifier":
        raise ValueError(
            f"{folder}: a {run.method.name} run learns a representation, not a classifier; "
            "export its fine-tuning run (runs.finetune) instead"
        )
    model = Probabilities(run.method.classifier()).eval()
    spec = run.method.spec
    example = torch.rand(
        2, spec.in_channels, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0)
    )
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    out = Path(out) if out is not None else Path(folder) / f"model{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based ONNX exporter's notice
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
        # torchvision's roi_align (RAN's crops) checks its inputs with Python booleans while tracing; the check
        # below runs the exported model on a batch of another size, which a wrongly frozen shape would fail
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "onnx":
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=["faces"],
                output_names=["probabilities"],
                dynamic_axes={"faces": {0: "batch"}, "probabilities": {0: "batch"}},
                dynamo=False,
            )
        else:
            torch.jit.trace(model, example).save(str(tmp))
    tmp.replace(out)
    contract_path = out.with_name(out.name.split(".")[0] + ".json")
    contract_path.write_text(json.dumps(contract(run), indent=1))
    other = torch.rand(3, *example.shape[1:], generator=torch.Generator().manual_seed(1))  # another batch size
    difference = _max_difference(model, out, fmt, other) if check else None
    return {"model": out, "contract": contract_path, "max_abs_difference": difference}


def latency(folder, path=None, batch_sizes=(1, 64), repeats: int = 7, threads: int | None = None) -> list[dict]:
    """Milliseconds per face of the exported ONNX model under ONNX Runtime against the PyTorch model (eager,
    float32), both on the CPU, timed alternately in one process (median of ``repeats``, after a warm-up)."""
    import time

    import numpy as np
    import onnxruntime

    from utils.core.runs import load_run

    run = load_run(folder, device="cpu")
    model = Probabilities(run.method.classifier()).eval()
    path = Path(path) if path is not None else Path(folder) / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported model; run python -m utils.export {folder} --format onnx first")
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        torch.set_num_threads(threads)
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    spec = run.method.spec
    rows = []
    for n in batch_sizes:
        x = torch.rand(
            n, spec.in_channels, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0)
        )
        feed = {"faces": x.numpy()}
        runners = {
            "onnxruntime": lambda feed=feed: session.run(None, feed),
            "pytorch": lambda x=x: model(x),
        }
        times = {name: [] for name in runners}
        with torch.no_grad():
            for f in runners.values():
                f()  # warm-up
            for _ in range(repeats):
                for name, f in runners.items():
                    start = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - start)
        row = {"batch": n, **{f"{k} ms/face": 1000 * float(np.median(v)) / n for k, v in times.items()}}
        row["speed-up"] = row["pytorch ms/face"] / row["onnxruntime ms/face"]
        rows.append(row)
    return rows


def _max_difference(model, path: Path, fmt: str, example: torch.Tensor) -> float | None:
    with torch.no_grad():
        expected = model(example).numpy()
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
            got = torch.jit.load(str(path))(example).numpy()
    else:
        try:
            import onnxruntime
        except ImportError:
            return None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"faces": example.numpy()})[0]
    return float(abs(got - expected).max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run's folder (checkpoints/<run>)")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument("--out", default=None, help="the model file (default: inside the run's folder)")
    parser.add_argument("--latency", action="store_true", help="onnx: time it against PyTorch on this CPU")
    args = parser.parse_args(argv)
    try:
        result = export(args.run_dir, args.format, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result['model']} and {result['contract']}")
    if result["max_abs_difference"] is not None:
        print(f"largest difference from PyTorch's probabilities: {result['max_abs_difference']:.2e}")
    if args.latency and args.format == "onnx":
        for row in latency(args.run_dir, result["model"]):
            print(
                f"batch {row['batch']:>3}: ONNX Runtime {row['onnxruntime ms/face']:.2f} ms/face, "
                f"PyTorch {row['pytorch ms/face']:.2f} ms/face ({row['speed-up']:.2f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
