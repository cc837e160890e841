"""IPython magics: `%aif_session` and `%%aif_bench` (benchmark the model the cell defines)."""

from __future__ import annotations

import json
from pathlib import Path

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from aifactory.benchmarks.config import DEFAULT_EXPERIMENT

from .session import session_info

EXPORT_DIR = "aif-models"


class ModelNotFound(ValueError):
    pass


@magics_class
class AIFMagics(Magics):
    @line_magic
    def aif_session(self, line):
        """Show this session's Slurm job, node, GPUs, walltime and links (`--json` for the raw dict)."""
        info = session_info()
        if line.strip() == "--json":
            print(json.dumps(info, indent=2))
            return info
        from .panels import SessionPanel

        display(SessionPanel(live=False))
        return None

    @magic_arguments()
    @argument("--model", dest="model_var", help="Name of the torch.nn.Module variable (default: the one the cell defines).")
    @argument("--input-shape", help="torch modules: per-sample input shape without the batch dimension, e.g. 64 or "
              "1,8,8 (Hugging Face models need none).")
    @argument("--data", default="sklearn:digits", help="Dataset: sklearn:NAME, .npz, .csv, .parquet, image folder.")
    @argument("--label", default=None, help="Label column/key of a data file.")
    @argument("--backend", action="append", help="torch:eager, torch:compile, onnxruntime (repeatable).")
    @argument("--scenario", action="append", help="LoadGen scenario (repeatable; default SingleStream, Offline).")
    @argument("--device", default="auto", help="auto, cpu or cuda.")
    @argument("--profile", default="quick", help="quick or full.")
    @argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment.")
    @argument("--no-wait", action="store_true", help="Return at once; the panel keeps updating.")
    @cell_magic
    def aif_bench(self, line, cell):
        """Run the cell, then benchmark the model it defines: a torch module (exported as TorchScript),
        or a Hugging Face model (saved with its tokenizer as a model directory)."""
        from .panels import DEFAULT_SCENARIOS, BenchmarkPanel, error_box

        args = parse_argstring(self.aif_bench, line)
        before = dict(self.shell.user_ns)
        result = self.shell.run_cell(cell)
        if not result.success:
            return
        panel = BenchmarkPanel(data=args.data, label=args.label, backends=args.backend or ["torch:eager"],
                               device=args.device, scenarios=args.scenario or list(DEFAULT_SCENARIOS),
                               profile=args.profile, experiment=args.experiment)
        display(panel)
        self.shell.user_ns["aif_bench_panel"] = panel  # the last one: its job, result and run id
        try:
            name, module = find_module(self.shell.user_ns, before, args.model_var)
            if is_hf_model(module):
                panel.model.value = str(save_hf_model(module, find_tokenizer(self.shell.user_ns, name), name))
                if not args.backend:
                    panel.backends.value = ("transformers",)
            else:
                if not args.input_shape:
                    raise ModelNotFound(f"{name} is a torch module: give --input-shape (per sample, e.g. 64)")
                shape = [int(d) for d in args.input_shape.split(",")]
                panel.model.value = str(export_torchscript(module, name, shape))
                panel.overrides["model"] = {"input_shape": shape}
        except Exception as err:  # noqa: BLE001 - the cell's model is the user's: say what went wrong
            panel.message.value = error_box(f"%%aif_bench: {err}")
            return
        panel.run(wait=not args.no_wait)
        return  # the panel is already displayed


def find_module(namespace, before, name=None):
    """The nn.Module named `name`, else the one the cell created or replaced (the last one)."""
    import torch

    if name:
        module = namespace.get(name)
        if not isinstance(module, torch.nn.Module):
            raise ModelNotFound(f"--model {name}: expected a torch.nn.Module variable, got {type(module).__name__}")
        return name, module
    new = [(k, v) for k, v in namespace.items()
           if isinstance(v, torch.nn.Module) and not k.startswith("_") and before.get(k) is not v]
    if not new:
        raise ModelNotFound("the cell defines no torch.nn.Module; assign one to a variable or pass --model NAME")
    return new[-1]


def is_hf_model(module):
    """A transformers model (PreTrainedModel): it saves itself as a model directory."""
    return hasattr(module, "save_pretrained") and hasattr(module, "config")


def find_tokenizer(namespace, model_name):
    """The tokenizer the cell's namespace holds (the model needs one saved beside it)."""
    tokenizers = [(k, v) for k, v in namespace.items()
                  if not k.startswith("_") and hasattr(v, "save_pretrained") and hasattr(v, "convert_ids_to_tokens")]
    if not tokenizers:
        raise ModelNotFound(f"{model_name} is a Hugging Face model but no tokenizer variable is defined; load one "
                            "(AutoTokenizer.from_pretrained) in the cell or before it")
    return tokenizers[-1][1]


def save_hf_model(module, tokenizer, name, directory=EXPORT_DIR):
    """Model and tokenizer saved as one directory the worker process loads offline."""
    path = Path(directory, name).resolve()
    path.mkdir(parents=True, exist_ok=True)
    module.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def export_torchscript(module, name, input_shape, directory=EXPORT_DIR):
    """Trace the module on one zero sample and save it where the worker process can load it."""
    import torch

    module = module.eval().cpu()
    example = torch.zeros(1, *input_shape)
    try:
        traced = torch.jit.trace(module, example)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot trace {name} with an input of shape {tuple(example.shape)}: "
                         f"check --input-shape ({err})") from None
    Path(directory).mkdir(exist_ok=True)
    path = Path(directory, f"{name}.pt").resolve()
    traced.save(str(path))
    return path
