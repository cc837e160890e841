"""lm-evaluation-harness tasks, offline: local task YAMLs over local data files, on the loaded model.

Before lm-eval sees a task, every YAML is read and refused if it would download: its
`dataset_path` must be a local loader (json, csv, parquet, text, arrow) or an existing folder,
and every file in `dataset_kwargs.data_files` must exist. Relative data files are taken relative
to the YAML (lm-eval would take them relative to wherever the job runs); the checked YAMLs are
copied, with absolute paths, into a temporary include path. lm-eval runs with the Hub and
datasets offline, on the transformers backend's own module and tokenizer (same precision and
device as the rest of the benchmark). Its metrics and standard errors are logged as it reports
them: `lm_eval.<task>.<metric>` and `lm_eval.<task>.<metric>_stderr`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import AccuracyError, ConfigError
from ..layout import Metrics

LOCAL_LOADERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


def _read_yaml(path):
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"accuracy.lm_eval: cannot read task file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"accuracy.lm_eval: {path}: expected a task mapping")
    return data


def task_files(cfg) -> dict:
    """task name -> its YAML, from include_path and from tasks given as YAML paths."""
    files = {}
    if cfg.include_path:
        folder = Path(cfg.include_path)
        if not folder.is_dir():
            raise ConfigError(f"accuracy.lm_eval.include_path: {folder} is not a folder")
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            name = _read_yaml(path).get("task")
            if isinstance(name, str):
                files[name] = path
    for task in cfg.tasks:
        if task.endswith((".yaml", ".yml")):
            path = Path(task)
            if not path.is_file():
                raise ConfigError(f"accuracy.lm_eval.tasks: {path} does not exist")
            files[_read_yaml(path).get("task") or path.stem] = path
    return files


def _local_data(task, yaml_path):
    """The task with its data files made absolute; refuse one that would download."""
    name = task.get("task", yaml_path.stem)
    dataset = task.get("dataset_path")
    if dataset is None:
        raise ConfigError(f"accuracy.lm_eval: task {name} ({yaml_path}) has no dataset_path; offline tasks use "
                          "dataset_path: json with dataset_kwargs.data_files")
    folder = yaml_path.parent / str(dataset)
    if dataset not in LOCAL_LOADERS:
        if folder.is_dir():
            task["dataset_path"] = str(folder.resolve())
            return task
        raise ConfigError(f"accuracy.lm_eval: task {name} ({yaml_path}) would download dataset_path {dataset!r} "
                          "from the Hugging Face Hub; compute nodes are offline. Use dataset_path: json (or csv, "
                          "parquet) with dataset_kwargs.data_files pointing at local files")
    kwargs = dict(task.get("dataset_kwargs") or {})
    data_files = kwargs.get("data_files")
    if not data_files:
        raise ConfigError(f"accuracy.lm_eval: task {name} ({yaml_path}): dataset_path {dataset} needs "
                          "dataset_kwargs.data_files (local files)")
    kwargs["data_files"] = _resolve_files(data_files, yaml_path, name)
    task["dataset_kwargs"] = kwargs
    return task


def _resolve_files(data_files, yaml_path, name):
    if isinstance(data_files, dict):
        return {split: _resolve_files(files, yaml_path, name) for split, files in data_files.items()}
    if isinstance(data_files, list):
        return [_resolve_files(f, yaml_path, name) for f in data_files]
    path = Path(str(data_files))
    if str(data_files).startswith(("http://", "https://", "hf://")):
        raise ConfigError(f"accuracy.lm_eval: task {name} ({yaml_path}) would download {data_files}")
    candidates = [path] if path.is_absolute() else [yaml_path.parent / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    raise ConfigError(f"accuracy.lm_eval: task {name} ({yaml_path}): data file {data_files} does not exist "
                      f"(looked in {', '.join(str(c.parent) for c in candidates)})")


def prepare_tasks(cfg, folder: Path) -> list[str]:
    """Checked copies of the requested tasks' YAMLs in `folder`; returns the task names to run."""
    import yaml

    files = task_files(cfg)
    names = [_task_name(t, files) for t in cfg.tasks]
    for name in names:
        task = _local_data(_read_yaml(files[name]), files[name])
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return names


def _task_name(task, files):
    if task.endswith((".yaml", ".yml")):
        return _read_yaml(task).get("task") or Path(task).stem
    if task not in files:
        known = ", ".join(sorted(files)) or "none (set accuracy.lm_eval.include_path)"
        raise ConfigError(f"accuracy.lm_eval.tasks: no local task {task!r}; tasks found: {known}. Tasks that "
                          "ship with lm-eval download their data, so only local task YAMLs run here")
    return task


def run_lm_eval(backend, cfg) -> tuple[dict, dict]:
    """(metrics for the layout, lm-eval's results as it returned them) on the backend's model."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from .hf import go_offline

    if not hasattr(backend, "module") or not hasattr(backend, "tokenizer"):
        raise AccuracyError(f"accuracy.lm_eval: backend {backend.label} is not a transformers backend; "
                            "lm-eval runs on the transformers backend's model")
    go_offline()
    with tempfile.TemporaryDirectory(prefix="aif-lm-eval-") as tmp:
        names = prepare_tasks(cfg, Path(tmp))
        model = HFLM(pretrained=backend.module, tokenizer=backend.tokenizer, batch_size=cfg.batch_size,
                     device=str(backend.device))
        try:
            results = lm_eval.simple_evaluate(model=model, tasks=names, task_manager=TaskManager(include_path=tmp),
                                              limit=cfg.limit, num_fewshot=cfg.num_fewshot, log_samples=False,
                                              bootstrap_iters=1000, random_seed=0, numpy_random_seed=0,
                                              torch_random_seed=0)
        except Exception as err:  # noqa: BLE001 - lm-eval's own failures, quoted under our field
            raise AccuracyError(f"accuracy.lm_eval: lm-eval failed on {', '.join(names)}: {type(err).__name__}: "
                                f"{str(err).strip()[:500]}") from err
    return layout_metrics(results), _jsonable(results)


def layout_metrics(results) -> dict:
    """lm-eval's `{task: {"acc,none": v, "acc_stderr,none": s, ...}}` as lm_eval.<task>.<metric>."""
    out = {}
    for task, values in (results.get("results") or {}).items():
        for key, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or key.startswith(("alias", "sample_len")):
                continue
            out[Metrics.lm_eval(task, key)] = float(value)
    return out


def _jsonable(results):
    keep = {k: results.get(k) for k in ("results", "versions", "n-shot", "higher_is_better", "n-samples", "configs")}
    return json.loads(json.dumps(keep, default=str))
