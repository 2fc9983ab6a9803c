"""States of trajectories computed in memory by extraction's own forward, for callers that score text as it comes.

`probekit extract` writes states to shards; a goal built from examples
(`probekit goal --from`) and the reward-model API (`probekit.reward`) need the
same states of a few texts right away. They encode with `probekit.extract.render.encode_all` and run
`live_states`, which is `build_shard` (length-bucketed, padding-safe batches,
shared prompts, the storage dtype's rounding) without the file: the states a
store would hold for these texts, so a probe scores them as it scored its
training store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from probekit.data.schema import Trajectory
from probekit.extract.options import ExtractOptions
from probekit.extract.render import Encoded
from probekit.extract.run import build_shard
from probekit.store import ShardData


def live_states(trajectories: Sequence[Trajectory], encoded: Sequence[Encoded], loaded, layers: Sequence[int], *, stride: int,
                dtype: str, max_batch_tokens: int | None = None, share_prompts: bool = True,
                advance: Callable[[int], None] = lambda n: None) -> ShardData:
    """The shard `extract` would write for these trajectories (positions every `stride`-th token, 0: the last only)."""
    opts = ExtractOptions(trajectories=Path("."), out=Path("."), dtype=dtype, max_batch_tokens=max_batch_tokens, share_prompts=share_prompts)
    return build_shard(list(trajectories), list(encoded), loaded, list(layers), stride, opts, advance).result()  # done: no lane
