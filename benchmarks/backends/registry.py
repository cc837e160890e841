"""Which class runs each backend `kind`: the one place a new backend is named.

Entries are import paths, so naming a backend costs nothing until a config uses it (and the
framework it needs is imported later still, when the backend is built on a model).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import BackendConfig
    from ..models import LoadedModel
    from .base import Backend

#: kind -> "module:class" (relative to this package), in the order error messages list them
BACKENDS = {
    "torch": "pytorch:TorchBackend",
    "onnxruntime": "onnxruntime:OnnxRuntimeBackend",
    "transformers": "transformers:TransformersBackend",
    "null": "null:NullBackend",
    "endpoint": "endpoint:EndpointBackend",
}
#: other spellings of a kind in the `kind:rest` shorthand
ALIASES = {"ort": "onnxruntime", "hf": "transformers"}
#: the class a kind uses for a Hugging Face (text) model, where it differs from BACKENDS
TEXT_BACKENDS = {"onnxruntime": "onnx_text:OnnxTextBackend", "torch": "transformers:TransformersBackend"}


def backend_class(kind: str) -> type[Backend]:
    try:
        module_name, cls_name = BACKENDS[kind].split(":")
    except KeyError:
        raise ConfigError(f"kind: expected one of {', '.join(BACKENDS)}, got {kind!r}") from None
    return getattr(importlib.import_module(f"{__package__}.{module_name}"), cls_name)


def parse_shorthand(text: str, where="backend") -> dict:
    """'torch:compile', 'onnxruntime:CUDAExecutionProvider', 'null' -> the config mapping."""
    kind, _, rest = text.partition(":")
    kind = ALIASES.get(kind, kind)
    if kind not in BACKENDS:
        forms = [backend_class(k).shorthand for k in BACKENDS]
        raise ConfigError(f"{where}: unknown backend {text!r}; expected {', '.join(forms[:-1])} or {forms[-1]}")
    return backend_class(kind).from_shorthand(rest)


def preflight(cfg: BackendConfig, model_kind: str, where: str):
    """Cheap checks before anything runs, so a bad backend fails the benchmark at once."""
    backend_class(cfg.kind).preflight(cfg, model_kind, where)


def create_backend(cfg: BackendConfig, model: LoadedModel, where: str) -> Backend:
    if getattr(model, "is_text", False) and cfg.kind in TEXT_BACKENDS:
        module_name, cls_name = TEXT_BACKENDS[cfg.kind].split(":")
        return getattr(importlib.import_module(f"{__package__}.{module_name}"), cls_name)(cfg, model, where)
    return backend_class(cfg.kind)(cfg, model, where)
