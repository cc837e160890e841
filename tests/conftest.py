"""Fixtures every test may ask for; the helpers themselves live in aifactory.hub.testing.

Tests import helpers from their modules (`aifactory.hub.testing.ci`, `...cluster`,
`...platform`, `aifactory.common.net`), not from this file.
"""

# the real platform (hub + proxy + MLflow service), and a free port
from aifactory.hub.testing.fixtures import platform, platform_factory, port  # noqa: F401
# a real OpenID Connect provider on loopback (tests/test_oidc*.py)
from aifactory.hub.testing.fixtures import oidc_db_template, oidc_provider  # noqa: E402,F401

# a real MLflow server (SQLite, served artifacts) shared by the benchmark and comparison tests
from bench_fixtures import mlflow_server  # noqa: E402,F401

# one real vLLM endpoint on the mini-cluster behind a real platform, for the serving tests
from serve_fixtures import served  # noqa: E402,F401

# the reference language models (built once per cache) for the generative-AI tests
from genai_fixtures import reference_lm  # noqa: E402,F401
