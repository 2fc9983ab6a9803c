"""Shared fixtures: the real-data folder option and a tiny random causal LM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--data-dir",
        default=str(ROOT.parent / "shared" / "data"),
        help="folder with the real public data (gsm8k/, hh_rlhf/); tests that need it skip when absent",
    )


@pytest.fixture(scope="session")
def data_dir(request) -> Path:
    path = Path(request.config.getoption("--data-dir")).resolve()
    if not (path / "gsm8k").is_dir():
        pytest.skip(f"real data not found at {path} (pass --data-dir)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 4-layer Llama saved with a real (SmolLM2-style) tokenizer.

    Built from a config in the test so plumbing tests run in seconds; the
    tokenizer is a small byte-level BPE trained here, so no download is needed.
    """
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(autouse=True, scope="session")
def _float32_on_cpu():
    """Models run in float32 unless a test asks otherwise, whatever this CPU's auto choice
    (tests/test_cpu_dtype.py tests that choice; subprocesses inherit the variable)."""
    from probekit.cpu_dtype import ENV

    before = os.environ.get(ENV)
    os.environ[ENV] = "float32"
    yield
    if before is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = before
