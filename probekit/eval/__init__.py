"""`probekit eval`: how well a fitted probe ranks trajectories, beside the baselines that need no probe.

- `evaluate.evaluate_checkpoint` / `evaluate.write_evaluation`: AUROC, pairwise
  accuracy, prefix AUROC and error localisation of a checkpoint on a store.
- `baselines.run_baselines`: length, random and logistic-regression probes on
  the same trajectories and bootstrap resamples.
- `length_control.LengthControl`: length-stratified and length-residual AUROCs.
- `context.make_context` / `context.EvalContext`: the trajectories, pairs and
  resamples every score above is judged on.
- `plots`: the prefix-AUROC figure, and the two helpers every figure uses.

Heavy imports (torch) stay inside the submodules, so importing this package is cheap.
"""
