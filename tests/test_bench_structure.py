"""The benchmark suite's shape: no import circles, one vocabulary, one error base.

Read from the source with `ast` (nothing is imported or run), so a new module is checked the day
it is added. An import inside a function counts like one at the top: both make a circle the next
reader has to untangle. Imports under `if TYPE_CHECKING:` do not run and are left out.
"""

import ast
from pathlib import Path

import pytest

from aifactory.benchmarks import errors, layout
from aifactory.common.errors import AIFError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "aifactory.benchmarks"
SOURCE = ROOT / "benchmarks"
LAYOUT_DOC = ROOT / "docs" / "mlflow-layout.md"


def module_files():
    """module name -> file, for every module of the package."""
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([PACKAGE, *parts])] = path
    return found


def _is_type_checking(node):
    return "TYPE_CHECKING" in (getattr(node.test, "id", None), getattr(node.test, "attr", None))


def _imports(tree):
    """Every Import/ImportFrom node, skipping `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(name, path, modules):
    """The package's modules that `name` imports (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module
        # `from pkg import sub` imports the submodule; `from pkg import name` imports pkg
        subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        targets.update(subs or [base])
    return {t for t in targets if t in modules and t != name}


def import_graph():
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_among_the_suites_modules():
    graph = import_graph()
    assert len(graph) > 30, "the walk found too few modules: is SOURCE right?"
    assert cycles(graph) == [], "import circles (each list imports itself round): " + str(cycles(graph))


def test_the_cycle_check_sees_function_level_imports(tmp_path):
    """The checker itself: a circle closed by an import inside a function is one."""
    graph = {"a": {"b"}, "b": set()}
    assert cycles(graph) == []
    graph["b"].add("a")
    assert cycles(graph) == [["a", "b"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from .other import x\n")
    assert imported_modules(f"{PACKAGE}.m", source, {f"{PACKAGE}.m", f"{PACKAGE}.other"}) == {f"{PACKAGE}.other"}


def test_the_comparison_model_imports_no_report():
    graph = import_graph()
    model = graph[f"{PACKAGE}.compare.comparison"] | graph[f"{PACKAGE}.compare.selection"]
    assert f"{PACKAGE}.compare.report" not in model and f"{PACKAGE}.compare.cli" not in model


# -- one vocabulary ---------------------------------------------------------------------------------
def _vocabulary():
    names = {*layout.SCENARIOS, layout.ACCURACY, layout.KIND_BENCHMARK, layout.KIND_CHILD, layout.KIND_COMPARISON}
    for namespace in (layout.Tags, layout.Metrics, layout.Artifacts):
        names.update(v for k, v in vars(namespace).items() if k.isupper() and isinstance(v, str))
    return names


def test_every_layout_name_is_the_one_the_doc_promises():
    doc = LAYOUT_DOC.read_text()
    missing = sorted(name for name in _vocabulary() if f"`{name}" not in doc and name not in doc)
    assert missing == [], f"names in benchmarks/layout.py that docs/mlflow-layout.md does not mention: {missing}"


# Words that are also something else, where the literal is not the metric or tag: config sections
# and JSON keys of an artifact's content ("accuracy" of a robustness level), LoadGen's own
# TestSettings field the metric is named after, the report's "comparison" page.
NOT_ONLY_VOCABULARY = {"accuracy", "loadgen", "reports", "server_target_qps", "comparison"}


def _literals(path):
    """String constants of a file that are not docstrings."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("folder", ["benchmarks", "extensions"])
def test_tags_metrics_and_scenarios_are_spelled_only_in_layout(folder):
    vocabulary = _vocabulary() - NOT_ONLY_VOCABULARY
    spelled = [f"{path.relative_to(ROOT)}:{line}: {value!r}" for path in sorted((ROOT / folder).rglob("*.py"))
               if path != SOURCE / "layout.py" for line, value in _literals(path) if value in vocabulary]
    assert spelled == [], "import these from aifactory.benchmarks.layout instead:\n" + "\n".join(spelled)


# -- one error base ---------------------------------------------------------------------------------
def test_every_suite_error_is_a_benchmark_error_and_keeps_its_builtin_type():
    suite_errors = [e for e in vars(errors).values() if isinstance(e, type) and issubclass(e, Exception)
                    and e.__module__ == errors.__name__]
    assert all(issubclass(e, errors.BenchmarkError) and issubclass(e, AIFError) for e in suite_errors)
    for name, builtin in (("ConfigError", ValueError), ("DataError", ValueError), ("ModelError", ValueError),
                          ("BackendError", ValueError), ("AccuracyError", ValueError), ("ScenarioError", RuntimeError),
                          ("MLflowUnavailable", RuntimeError), ("EmptySelection", ValueError),
                          ("ServerUnreachable", ConnectionError), ("ResultsNotFound", FileNotFoundError)):
        assert issubclass(getattr(errors, name), builtin), name


def test_no_module_defines_an_error_of_its_own():
    """Errors live in errors.py; a class deriving from Exception elsewhere would split the base."""
    defined = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "").endswith(("Error", "Exception"))
                                                      for b in node.bases):
                defined.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert [d for d in defined if not d.startswith("benchmarks/errors.py")] == []
