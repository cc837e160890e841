"""Reference models that ship with the suite: trained in seconds on scikit-learn's bundled data.

Every example and test benchmarks a real model without downloading anything. Each model is
shipped as ONNX (`.onnx`), TorchScript (`.pt`), a torch.export archive (`.pt2`) and its weights
(`.state.pt`, used by the factories below, e.g. `aifactory.benchmarks.reference:digits_mlp`).
`aif bench reference-models DIR` rebuilds them (build.py). The models are trained on the whole dataset:
their accuracy shows the suite works, it is not a generalisation estimate.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError

MODELS_DIR = Path(__file__).parent / "models"  # the shipped files (.onnx, .pt, .pt2, .state.pt)


def _torch():
    import torch

    return torch


def _modules():
    torch = _torch()
    nn = torch.nn

    class Standardize(nn.Module):
        """Input scaling inside the model, so it takes the raw bundled features."""

        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

        def forward(self, x):
            return (x - self.mean) / self.std

    class Reference(nn.Module):
        def __init__(self, body, input_shape, mean=0.0, std=1.0, out_scale=1.0, out_shift=0.0):
            super().__init__()
            self.aif_input_shape: list[int] = list(input_shape)  # read back by the model loader
            self.aif_input_dtype: str = "float32"
            self.scale = Standardize(mean, std)
            self.body = body
            self.out_scale = out_scale
            self.out_shift = out_shift

        def forward(self, x):
            return self.body(self.scale(x)) * self.out_scale + self.out_shift

    return nn, Standardize, Reference


def architecture(name, stats=None):
    nn, _, Reference = _modules()
    stats = stats or {"mean": 0.0, "std": 1.0, "out_scale": 1.0, "out_shift": 0.0}
    if name == "digits_mlp":
        body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        shape = [64]
    elif name == "digits_cnn":
        body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                             nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
        shape = [1, 8, 8]
    elif name == "breast_cancer_mlp":
        body = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))
        shape = [30]
    elif name == "diabetes_mlp":
        body = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
        shape = [10]
    else:
        raise KeyError(f"unknown reference model {name!r}; expected one of {', '.join(REFERENCE_MODELS)}")
    return Reference(body, shape, stats["mean"], stats["std"], stats["out_scale"], stats["out_shift"])


# name -> (sklearn dataset, task, epochs)
REFERENCE_MODELS = {
    "digits_mlp": ("digits", "classification", 300),
    "digits_cnn": ("digits", "classification", 150),
    "breast_cancer_mlp": ("breast_cancer", "classification", 300),
    "diabetes_mlp": ("diabetes", "regression", 600),
}


def path(name, fmt="onnx"):
    """Shipped file of a reference model: fmt is onnx, pt (TorchScript), pt2 (torch.export)."""
    file = MODELS_DIR / f"{name}.{fmt}"
    if not file.exists():
        raise ModelError(f"{file}: reference model not built; run `aif bench reference-models`")
    return file


def load(name):
    torch = _torch()
    saved = torch.load(path(name, "state.pt"), weights_only=True, map_location="cpu")
    model = architecture(name, saved["stats"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


# Factories usable as model.path "aifactory.benchmarks.reference:digits_mlp"
def digits_mlp():
    return load("digits_mlp")


def digits_cnn():
    return load("digits_cnn")


def breast_cancer_mlp():
    return load("breast_cancer_mlp")


def diabetes_mlp():
    return load("diabetes_mlp")


def matmul_mlp(width=4096, depth=4, device="cpu"):
    """Untrained, matmul-heavy MLP (depth x width^2 GEMMs) for throughput vs matmul peak on GPUs.
    `device` builds the weights in place (GiBs at GPU widths, slow to initialise on a host)."""
    torch = _torch()
    nn, _, Reference = _modules()
    torch.manual_seed(0)
    with torch.device(device):
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(width, width, bias=False), nn.ReLU()]
        return Reference(nn.Sequential(*layers), [width]).eval()


def image_cnn():
    """Untrained CIFAR-sized CNN (3x32x32): a convolution-heavy latency reference."""
    torch = _torch()
    nn, _, Reference = _modules()
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))
    return Reference(body, [3, 32, 32]).eval()


def mlp_512():
    """matmul_mlp at width 512: a GEMM-bound latency reference small enough for a CPU."""
    return matmul_mlp(width=512, depth=4)


def mlp_1024():
    return matmul_mlp(width=1024, depth=4)


def null_model():
    """Identity: for measuring the harness itself."""
    nn, _, _ = _modules()
    module = nn.Identity()
    module.aif_input_shape = None
    return module
