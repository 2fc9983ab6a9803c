"""What every number on screen is: the words of each command's legend, in one place.

A table shows a number beside a short label; the legend under it (`probekit_cli.summary.legend`) says its unit,
scale and direction from these mappings, for the labels that table shows. A field that means the same in several
commands is written once (`COMMON`); where the same name means something else (`n_truncated`, `threshold`),
the command's own mapping says so. The README's "What a command prints" quotes these words.
"""

from __future__ import annotations

COMMON = {
    "seconds": "wall-clock seconds of the work (model loading excluded)",
    "tokens_per_second": "tokens the model read or decoded per wall-clock second",
    "n_skipped_invalid": "input records skipped by --skip-invalid",
    "n_prompts": "prompts read",
}

EXTRACT = {**COMMON,
           "complete": "every shard of the store is written (no: other ranks still work)",
           "n_trajectories": "trajectories (prompt + completion) stored",
           "n_rows_stored": "hidden-state rows kept: completion tokens at the --stride positions (prompt tokens are read, not stored)",
           "n_tokens_processed": "tokens the model ran over: prompts and completions, so more than the rows stored",
           "n_truncated": "trajectories longer than --max-length, cut from the left",
           "n_prompt_tokens_reused": "prompt tokens not run again thanks to --share-prompts",
           "model_dtypes": "the dtypes the model ran in"}

FIT = {**COMMON,
       "layer": "the model layer the probe reads",
       "epochs_run": "epochs trained before early stopping",
       "best_epoch": "epoch with the best validation pairwise accuracy (its weights are saved)",
       "train_pairs": "preference pairs trained on", "valid_pairs": "pairs in the validation split",
       "row_source": "memory (the layer fitted --memory-budget-mb) or stream (rows read from the shards)"}

GENERATE = {**COMMON,
            "n_trajectories": "samples written (prompts x --samples)",
            "tokens_generated": "completion tokens decoded, fallback resumes included",
            "accuracy_per_sample": "share of samples whose answer matches the gold answer (0 to 1, higher is better)",
            "n_hit_max_new_tokens": "samples cut at --max-new-tokens",
            "n_stopped_early": "samples --filter stopped before they ended",
            "n_fallback_groups": "prompts whose every sample was stopped, so all were decoded on (their tokens count as generated)",
            "tokens_resumed_for_fallback": "tokens decoded again for those prompts"}

STEER = {**COMMON,
         "tokens_generated": "tokens decoded over every beam and candidate",
         "goal": "the goal Q points at",
         "mean_q_best_beam": "mean Q (cosine to the goal, -1 to 1, higher is closer) of each prompt's best beam at its end",
         "accuracy_best_beam": "share of best beams whose answer matches the gold answer (0 to 1)",
         "resampled_steps": "empty steps drawn again (--empty-steps resample)",
         "n_best_ended_without_match": "best beams that ended without the --require-before-end text"}

SCORE = {**COMMON,
         "records": "records scored", "truncated": "records cut from the left to the checkpoint's max length",
         "without baseline": "records whose prompt has no baseline (--on-missing zero)",
         "records/s": "records scored per wall-clock second"}
SCORE |= {f"{key} {stat}": f"{word} of the {what} over records" for key, what in
          (("reward", "rewards (logits of the reward head: compare them, they are not probabilities)"),
           ("contrastive_reward", "contrastive rewards (reward minus the prompt's baseline mean)"))
          for stat, word in (("mean", "mean"), ("std", "standard deviation"), ("min", "minimum"), ("p50", "median"), ("max", "maximum"))}

BASELINE = {**COMMON,
            "n_responses": "baseline responses scored", "k_min": "fewest responses of a prompt", "k_max": "most responses of a prompt",
            "n_truncated": "responses cut from the left to the checkpoint's max length",
            "mean_of_means": "mean over prompts of the prompt's mean reward (a logit)",
            "std_of_means": "spread of those means across prompts",
            "mean_within_std": "mean over prompts of the spread of one prompt's rewards"}

GOAL = {"n_examples": "example completions averaged into the goal",
        "n_truncated": "examples cut from the left to the checkpoint's max length",
        "n_skipped_invalid": "example records skipped by --skip-invalid",
        "norm": "L2 norm of the goal in φ space",
        "checkpoint_mean_goal_norm": "the same for the checkpoint's mean goal, to compare the scale",
        "cosine to mean goal": "cosine (-1 to 1) to the checkpoint's mean goal; near 1: steering toward it is much like --goal mean",
        "cosine to kmeans goal": "best cosine (-1 to 1) to any of the checkpoint's k-means prototypes"}

ERROR_LOCALISATION = {
    "n_trajectories": "incorrect trajectories whose first wrong token is known",
    "n_tokens": "their stored token rows",
    "token_auroc": "AUROC of per-token Q, tokens before the first error vs at or after it (0.5 = chance, 1 = Q drops exactly there)",
    "threshold": "the Q (a cosine, -1 to 1) below which a token counts as detected; default: midway between the mean last-token Q "
                 "of correct and of incorrect trajectories (--q-threshold)",
    "detected_frac": "share of those trajectories whose Q ever falls below the threshold (0 to 1)",
    "mean_abs_error": "mean distance in completion tokens between the first token below the threshold and the first wrong token "
                      "(over detected trajectories; lower is better)"}

METRICS_LEAD = ("AUROC: chance that a correct trajectory scores above an incorrect one (0.5 = chance, 1 = perfect); pairwise acc: "
                "share of preference pairs whose chosen completion scores higher (0.5 = chance); [95% CI] from a bootstrap over "
                "problems. Q is the cosine to a goal. Rows without 'probe' are trivial baselines.")

SWEEP_LEAD = ("pair acc, AUROC: mean ± std over seeds, 0.5 = chance; err AUROC: per-token Q AUROC before vs after the first error "
              "(1 = Q drops exactly there).")

FILTER = {
    "threshold": "a trajectory is dropped at its first token past the skip whose signal falls below it",
    "share of trajectories dropped": "of the report trajectories (0 to 1)",
    "share of tokens saved (official count)": "tokens after each drop point over all tokens, as the paper counts them",
    "share of tokens saved (fallback groups count as generated)": "the same, with the tokens of problems whose every solution "
                                                                  "was dropped counted as generated (they fall back to all of them)",
}
FILTER_Q_THRESHOLD = ("Q is a cosine in [-1, 1]; a negative threshold is normal: partial solutions often point away from the goal "
                      "before they end, and auto chooses from the quantiles of each solution's minimum Q.")

DEMO_LEAD = ("AUROC, Q AUROC, pairwise acc: 0.5 = chance, [95% CI] over test problems; vote acc: majority-vote accuracy over test "
             "problems; tokens saved (official / effective): share of the test solutions' tokens after the filter's drop points, "
             "official as the paper counts them, effective counting a problem whose every solution was dropped as generated.")
