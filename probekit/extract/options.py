"""The options of an extraction, importable without torch (the CLI builds its options from them), validated in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from probekit.config import Config, option
from probekit.errors import ProbekitError
from probekit.extract.plan import batch_token_budget, parse_positions
from probekit.store import STATE_DTYPES


def parse_rank(shard: str | None) -> tuple[int, int]:
    """(rank, world) from `--shard i/N`, else from torchrun's environment, else (0, 1)."""
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ProbekitError(f"--shard must look like i/N (e.g. 0/4), got '{shard}'") from None
    else:
        i, n = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= i < n:
        raise ProbekitError(f"shard rank {i} is outside 0..{n - 1}")
    return i, n


@dataclass(frozen=True)
class ExtractOptions(Config):
    """What to extract and how; the help texts are the CLI's (`probekit extract --help`)."""

    trajectories: Path = option(None, "Trajectories JSONL (see data/README.md), e.g. from `probekit data synth`.")
    out: Path = option(None, "Store folder: manifest.json, pairs.jsonl and shard-*.h5 go here. Re-running the same command resumes.")
    pairs: Path | None = option(None, "Pairs JSONL ({chosen, rejected} ids). Default: every (label 1, label 0) combination within a group.")
    model: str = option("smollm2-135m", "smollm2-135m (bundled), gemma3-270m, a local model folder, a local .gguf file, or a Hugging Face hub id (needs network).")
    layers: str | None = option(None, "Layer(s) in Hugging Face hidden_states numbering, e.g. 15 or 10,15,20. Default: the middle layer.")
    template: str = option("auto", "Prompt rendering: chat (the model's chat template), raw (prompt + completion), auto (chat when the tokenizer has one).")
    positions: str = option("all", "Completion positions to store: all, last, or stride:K (every K-th token; the last token is always kept).")
    max_length: int = option(1024, "Maximum tokens per trajectory; longer ones lose tokens from the prompt's left side first (counted and reported).")
    dtype: str = option("float16", "Storage dtype of the states: float16 (half the disk; overflow fails loudly) or float32.")
    model_dtype: str = option("auto", "Dtype the model runs in: auto (bfloat16 on CUDA; on a CPU bfloat16 where its matmuls measure faster, else float32; PROBEKIT_CPU_DTYPE forces it), float32, float16, bfloat16. Part of the store's key: a store is resumed only in its dtype.")
    device: str = option("auto", "auto (CUDA when available), cpu or cuda.")
    max_batch_tokens: int | None = option(None, "Token budget of one length-bucketed batch (padded length x batch size). Default: 2048 on a CPU (cache-sized batches ran 1.2x faster than 8192 on 2 cores), 8192 on a GPU.")
    shard_size: int = option(512, "Trajectories per HDF5 shard (the unit of resumption and of multi-process splitting).")
    share_prompts: bool = option(True, "Run a prompt shared by several trajectories (n samples of one question) once and their completions on its KV cache; states equal a full forward's up to rounding. Models with layers other than full or sliding-window attention (recurrent ones, e.g. Qwen3.5's linear attention) always run prompt + completion.")
    overlap: bool = option(False, "Copy states to the host, cast them and write shards on a writer thread while the next batch's forward runs (pinned, non-blocking copies on a GPU). The stores are identical either way (tested on a CPU, where it gains nothing measurable). Off by default until a GPU run has checked its CUDA path and measured it: `make bench-gpu`, stage overlap.")
    padding_side: str = option("right", "Padding side of the batches (results do not depend on it; tested).")
    shard: str | None = option(None, "Process only part i of N (e.g. 0/4) for job arrays; under torchrun RANK/WORLD_SIZE are used.")
    overwrite: bool = option(False, "Replace a store in --out made with other settings or data (otherwise refused); never a file probekit did not write.")
    skip_invalid: bool = option(False, "Skip invalid records (and report their count) instead of stopping at the first.")

    def validate(self) -> None:
        """Refuse options that cannot extract, before any file is read or model loaded.

        The rank of a job without --shard comes from the environment; `extract` checks it where it reads it.
        """
        if self.dtype not in STATE_DTYPES:
            raise ProbekitError(f"--dtype must be float16 or float32, got '{self.dtype}'")
        if self.padding_side not in ("left", "right"):
            raise ProbekitError("padding side must be 'left' or 'right'")
        if self.max_length < 2 or self.shard_size < 1:
            raise ProbekitError("--max-length must be >= 2 and --shard-size >= 1")
        parse_positions(self.positions)
        batch_token_budget(self.max_batch_tokens, "cpu")  # a bad budget fails before the model loads
        if self.shard:
            parse_rank(self.shard)
