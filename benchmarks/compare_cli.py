"""Where `aif compare` and `aif report` were before the compare package: kept for hub/cli.py's map
(`aifactory.benchmarks.compare_cli:compare`); the commands live in compare/cli.py."""

from .compare.cli import compare, report

__all__ = ["compare", "report"]
