"""probekit: goal-conditioned reward probes on frozen language models.

The pipeline's stages, lowest first (a stage imports only those below it):

- ground floor: `errors`, `io`, `outputs`, `progress`, `cache`, `config`
  (every option, validated in one place), `metrics` (numpy metric primitives);
- shared resources: `data` (trajectory and pair formats, adapters), `models`
  (loading the frozen LM), `cpu_dtype`, `store` (the sharded state cache, its
  one reader and writer);
- `extract`: run the frozen LM once and cache completion-token states;
- `probe`: the probe network, its losses and training, checkpoints, goals and
  the one scorer of rewards and Q-values;
- `eval`, then `filter`, then `generate`: the wings that use a fitted probe;
- `reward`: a probe as a reward model (`RewardProbe`, contrastive baselines, file scoring), then `serve` (the HTTP
  reward server) and `integrations` (TRL);
- runners on top: `pipeline` (fit + evaluate), `sweep`, `demo`.

`from probekit import RewardProbe` is the Python API; it is imported on first use, so that importing probekit (the
CLI does at start-up) does not load torch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "RewardProbe":
        from probekit.reward import RewardProbe

        return RewardProbe
    raise AttributeError(f"module 'probekit' has no attribute {name!r}")
