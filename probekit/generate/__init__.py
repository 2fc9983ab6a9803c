"""`probekit generate`, `steer` and `goal`: sampling with the frozen LM while keeping the states it computes.

- `generation.generate`: continuous-batching sampling into a store, with online
  early stopping (`stopping.OnlineStop`) that agrees with `probekit filter`.
- `steering.steer`: Q-guided step-level beam search.
- `custom_goals.goal_from_examples`: goal prototypes from example texts (`probekit goal --from`).
- `config.GenerateConfig`, `config.SteerConfig`: their options, free of torch.
- Below the drivers: `decoding.Scheduler` (continuous batching), `stopping`
  (end of sequence, stop strings, online stopping), `sampling` (per-sequence
  reproducible sampling) and `kv_rows` (moving rows between KV caches).
"""
