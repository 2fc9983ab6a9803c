"""The probekit cache folder: one root for everything probekit keeps between runs.

`$PROBEKIT_CACHE` (default `~/.cache/probekit`) holds `models/` (dequantised
GGUF weights) and `data/` (public data sets in the layout `--data-dir` reads),
so one variable moves both and the data folder can be passed as `--data-dir`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$PROBEKIT_CACHE, or ~/.cache/probekit."""
    env = os.environ.get("PROBEKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "probekit"
