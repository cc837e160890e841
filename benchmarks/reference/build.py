"""`aif bench reference-models`: train the reference models on bundled data and export every format.

Full-batch Adam on scikit-learn's bundled sets, a few seconds each on a laptop CPU; the written
files are what `aifactory.benchmarks.reference` ships (ONNX, TorchScript, torch.export, weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import MODELS_DIR, REFERENCE_MODELS, architecture


def train(name, seed=0):
    """Full-batch Adam on the bundled dataset; a few seconds on a laptop CPU."""
    import torch

    from ..config import DataConfig
    from ..data import load_dataset

    dataset_name, task, epochs = REFERENCE_MODELS[name]
    data = load_dataset(DataConfig(source=f"sklearn:{dataset_name}"))
    x = torch.from_numpy(data.x)
    stats = {"mean": data.x.mean(axis=0), "std": data.x.std(axis=0) + 1e-3, "out_scale": 1.0, "out_shift": 0.0}
    if name == "digits_cnn":
        x = x.reshape(-1, 1, 8, 8)
        stats["mean"], stats["std"] = float(data.x.mean()), float(data.x.std())
    if task == "regression":
        stats["out_scale"], stats["out_shift"] = float(data.y.std()), float(data.y.mean())
    torch.manual_seed(seed)
    model = architecture(name, stats)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    if task == "classification":
        y = torch.from_numpy(data.y)
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        y = torch.from_numpy(data.y.astype(np.float32)).unsqueeze(1)
        loss_fn = torch.nn.MSELoss()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y) if task == "classification" else loss_fn(model(x), y) / float(data.y.var())
        loss.backward()
        optimizer.step()
    return model.eval(), (x[:1],)


def export_all(directory=MODELS_DIR, names=None):
    """Train and write every format; returns the written paths."""
    import torch
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or REFERENCE_MODELS:
        model, example = train(name)
        stem = directory / name
        torch.save({"stats": _stats(model), "state_dict": model.state_dict()}, f"{stem}.state.pt")
        torch.jit.save(torch.jit.script(model), f"{stem}.pt")
        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.export.export(model, (torch.cat([example[0]] * 2),), dynamic_shapes=({0: batch},))
        torch.export.save(program, f"{stem}.pt2")
        torch.onnx.export(model, example, f"{stem}.onnx", dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        written += [Path(f"{stem}{s}") for s in (".state.pt", ".pt", ".pt2", ".onnx")]
    return written


def _stats(model):
    return {"mean": model.scale.mean.tolist(), "std": model.scale.std.tolist(), "out_scale": float(model.out_scale),
            "out_shift": float(model.out_shift)}
