"""Fixtures of the generative-AI tests: the reference language models, built once per cache.

The first session on a machine trains them (about half a minute on 2 cores); later sessions find
them up to date in the cache (AIF_REFERENCE_CACHE, else ~/.cache/aifactory) in under a second.
"""

import pytest

from aifactory.benchmarks import testing


@pytest.fixture(scope="session")
def reference_lm():
    """{name: path} of the reference tokenizer, LM, untrained LM, encoder and data files."""
    return testing.reference_language()
