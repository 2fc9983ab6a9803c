"""`probekit filter`: early dropping of sampled solutions by Q-value inside majority voting.

- `filtering.filter_store`: score a store, drop, vote, report and plot.
- `config.FilterConfig`: its options (threshold, skip-first, goal, signal).
- `early_stop`: the drop rule (first token past skip-first whose signal is below
  the threshold) over scored rows; `generate`'s online stopping applies the same rule.
- `thresholds`: threshold grids, selection on validation groups, budget baselines.
- `voting.Ballot`: majority vote and best-of-n over groups of solutions.
- `plots`: the frontier and per-token signal figures.
"""
