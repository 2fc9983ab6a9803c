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
- runners on top: `pipeline` (fit + evaluate), `sweep`, `demo`.
"""

__version__ = "0.1.0"
