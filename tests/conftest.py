"""Shared fixtures: the real-data folder option, a tiny random causal LM, one torch thread, a temporary cache.

Plain helpers that several test modules share are in tests/helpers.py; no test module imports another.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The files the real-data tests read (../shared/data/README.md lists them with their sha256).
REAL_FILES = ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "gsm8k/example_model_solutions.jsonl", "hh_rlhf/harmless-base/test.jsonl.gz")


def pytest_addoption(parser):
    parser.addoption(
        "--data-dir",
        default=None,
        help="folder with the real public data (gsm8k/, hh_rlhf/), or a data-set name meaning probekit's cache "
        "(default: ../shared/data when present, else the cache); tests never download, and skip when it is absent",
    )


@pytest.fixture(scope="session")
def data_dir(request) -> Path:
    from probekit.data.fetch import resolve_data_dir

    path = resolve_data_dir(request.config.getoption("--data-dir"), default=ROOT.parent / "shared" / "data", fetch=False).resolve()
    missing = [f for f in REAL_FILES if not (path / f).is_file()]
    if missing:
        pytest.skip(f"real data not found at {path}: no {', '.join(missing)} (pass --data-dir, or run "
                    f"`probekit data fetch gsm8k gsm8k-model-solutions hh-rlhf-harmless` for probekit's cache)")
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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny probes and models: one intra-op thread is faster and steadier on a shared 2-core machine.

    Not autouse: the modules that fit probes take it for all their tests with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`; module-scoped, so
    a module's own module-scoped fixtures (a model, its generations) can depend on it.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """PROBEKIT_CACHE in a temporary folder; the data folder under it."""
    from probekit.data import fetch

    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)
    return tmp_path / "cache" / "data"
