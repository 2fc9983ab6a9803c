"""Shared fixtures: the real-data folder option and a tiny random causal LM."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
