"""Every table a person reads: the one place that formats intervals, percentages and metric rows.

Each builder turns a command's result into `Summary` objects (`probekit_cli.summary`), which `Report.show` prints
as a table fitted to the terminal, markdown or csv; the first column labels the rows and is never cut.
"""

from __future__ import annotations

from typing import Any

from probekit.config import ablation_name
from probekit_cli.legends import DEMO_LEAD, FILTER, FILTER_Q_THRESHOLD, METRICS_LEAD, SWEEP_LEAD
from probekit_cli.summary import Summary, fmt_num, fmt_value, legend


def fmt_ci(m: dict | None) -> str:
    """'0.612 [0.58, 0.65]' for a metric with a 95% interval, '0.612' without one, '-' when undefined."""
    if not m or m.get("value") is None:
        return "-"
    if m.get("lo") is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['lo']:.2f}, {m['hi']:.2f}]"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def fmt_pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f}±{std:.2f}"


def metric_rows(metrics: dict) -> list[list[str]]:
    """(method, AUROC [95% CI], pairwise accuracy [95% CI], note) for the probe and the baselines."""
    probe = metrics["probe"]
    flag = "" if metrics.get("beats_baselines") in (True, None) else "(CI does not clear the best trivial baseline)"
    rows = [["probe reward", fmt_ci(probe["auroc"]), fmt_ci(probe["pairwise_accuracy"]), flag]]
    for key in sorted((k for k in probe if k.startswith("q_auroc_")), key=lambda k: (k != "q_auroc_mean", k)):
        rows.append([f"probe Q ({key[len('q_auroc_'):]} goal)", fmt_ci(probe[key]), "-", ""])
    for name, b in (metrics.get("baselines") or {}).items():
        if b is None:
            continue
        note = b.get("note", "")
        if name == "length" and b.get("direction"):
            note = f"{b['direction']} = better (chosen on {b.get('selected_on')})"
        rows.append([name, fmt_ci(b.get("auroc")), fmt_ci(b.get("pairwise_accuracy")), note])
    return rows + length_rows(metrics)


def length_rows(metrics: dict) -> list[list[str]]:
    """The row group of length-controlled AUROCs: per signal, within length strata and with log length regressed out."""
    probe = metrics["probe"]
    signals = [("probe reward", probe["auroc"], "")]
    signals += [(f"probe Q ({k[len('q_auroc_'):]} goal)", probe[k], "") for k in sorted(
        (k for k in probe if k.startswith("q_auroc_")), key=lambda k: (k != "q_auroc_mean", k))]
    length = (metrics.get("baselines") or {}).get("length") or {}
    if length.get("auroc"):
        signals.append(("length", length["auroc"], "length's own score"))
    bins = (metrics.get("length_control") or {}).get("bins")
    rows = []
    for name, auroc, check in signals:
        lc = auroc.get("length_controlled")
        if not lc:
            continue
        if "note" in lc:
            rows.append([f"{name}, length-controlled", "-", "-", lc["note"]])
            continue
        verdict = {True: "beats length", False: "does not beat length (a lower bound <= 0.5)", None: ""}[lc["beats_length"]]
        strata = lc["stratified"]
        used = f"{strata.get('n_strata', 0)} of {bins} length bins held both classes" if bins else f"{strata.get('n_strata', 0)} strata"
        rows.append([f"{name}, within length strata", fmt_ci(strata), "-",
                     f"{check}: what length still ranks inside a bin (0.5 only with very fine bins)" if check
                     else f"{used}, {strata.get('n_pairs', 0)} same-stratum pairs"])
        rows.append([f"{name}, log length regressed out", fmt_ci(lc["residualised"]), "-",
                     f"{check}: 0.5 by construction (the check passes)" if check else verdict])
    return rows


def metrics_table(metrics: dict, title: str | None = None) -> Summary:
    title = title or (f"probekit eval: {metrics['split']} split ({metrics['n_trajectories']} trajectories, "
                      f"{metrics['n_pairs']} pairs, {metrics['n_groups']} groups)")
    return Summary(title, ["method", "AUROC [95% CI]", "pairwise acc [95% CI]", "note"], metric_rows(metrics), wrap=("note",),
                   legend=METRICS_LEAD)


SWEEP_AXES = (("lam", "λ"), ("layer", "layer"), ("widths", "encoder"), ("K", "K"), ("ablation", "ablation"), ("goal", "goal"),
              ("n_seeds", "seeds"))


def _axis_values(s: dict) -> dict[str, str]:
    """A sweep summary row's configuration as text, by axis."""
    return {"lam": f"{s['lam']:g}", "layer": str(s["layer"]), "widths": str(s["widths"]), "K": "-" if s["K"] is None else str(s["K"]),
            "ablation": ablation_name(s) or "-", "goal": str(s["goal"]), "n_seeds": str(s["n_seeds"])}


def sweep_table(result: dict) -> Summary:
    """One row per configuration (mean ± std over seeds), then the baselines.

    The label is the configuration by the axes that differ between rows (λ always); the axes that are the same
    for every row go to the legend, so the table stays as narrow as the sweep is varied.
    """
    configs = [_axis_values(s) for s in result["summary"]]
    varied = [(k, name) for k, name in SWEEP_AXES if k == "lam" or len({c[k] for c in configs}) > 1]
    same = [f"{configs[0][k]} seeds" if k == "n_seeds" else f"{name} {configs[0][k]}" for k, name in SWEEP_AXES
            if configs and (k, name) not in varied and configs[0][k] != "-"]
    rows: list[list[Any]] = []
    for s, c in zip(result["summary"], configs):
        rows.append([" · ".join(f"{name} {c[k]}" for k, name in varied), fmt_pm(s["pairwise_acc_mean"], s["pairwise_acc_std"]),
                     fmt_pm(s["auroc_mean"], s["auroc_std"]), *_length_pair(s, "auroc"), fmt_pm(s["q_auroc_mean"], s["q_auroc_std"]),
                     *_length_pair(s, "q_auroc"), fmt_pm(s["err_token_auroc_mean"], s["err_token_auroc_std"]),
                     f"{s['beats_baselines'] or '-'} ; {s['beats_length'] or '-'}"])
    layer_varies = any(k == "layer" for k, _ in varied)
    dim = set()
    for b in result["baselines"]:
        name = b["baseline"] + (f" ({b['direction']})" if b.get("direction") else "")
        dim.add(len(rows))
        rows.append([f"baseline {name}" + (f" · layer {b['layer']}" if layer_varies else ""), fmt_pm(b["pairwise_acc_mean"], b["pairwise_acc_std"]),
                     fmt_pm(b["auroc_mean"], b["auroc_std"]), *_length_pair(b, "auroc"), "", "", "", "", ""])
    split = result["options"]["split"]
    legend = ("the same in every row: " + ", ".join(same) + ". " if same else "") + SWEEP_LEAD + (
        " in strata: AUROC within length strata; length out: with log length regressed out; beats: runs whose CI clears the best "
        "baseline ; runs that beat length")
    return Summary(f"probekit sweep ({split} split, mean ± std over seeds)",
                   ["configuration", "pair acc", "AUROC", "AUROC in strata", "AUROC length out", "Q AUROC", "Q in strata",
                    "Q length out", "err AUROC", "beats"], rows, legend=legend, dim=dim)


def _length_pair(s: dict, prefix: str) -> tuple[str, str]:
    """(within strata, log length regressed out) mean ± std of an AUROC's length controls, from a sweep summary row."""
    return fmt_pm(s.get(f"{prefix}_strat_mean"), s.get(f"{prefix}_strat_std")), fmt_pm(s.get(f"{prefix}_resid_mean"), s.get(f"{prefix}_resid_std"))


def filter_table(metrics: dict) -> Summary:
    rep = metrics["report"]
    base = rep["baselines"]
    rows = [
        ["report groups / trajectories", f"{rep['n_groups']} / {rep['n_trajectories']}"],
        ["threshold", fmt_num(metrics["chosen_threshold"]) + (" (Q, a cosine in [-1, 1])" if metrics["signal"] == "q" else " (reward, a logit)")],
        ["accuracy, majority vote (no filter)", rep["accuracy_majority"]],
        ["accuracy, filtered majority vote", rep["accuracy_filtered"]],
        ["share of trajectories dropped", rep["dropped_share"]],
        ["share of tokens saved (official count)", rep["tokens_saved_share"]],
        ["share of tokens saved (fallback groups count as generated)", rep["tokens_saved_share_effective"]],
        ["groups that fell back to all trajectories", rep["fallback_groups"]],
        ["accuracy, random drops at same budget", fmt_pm(base["random"]["accuracy"], base["random"]["accuracy_std"])],
        ["accuracy, length cap at same budget", f"{fmt_num(base['length']['accuracy'])} (cap {base['length']['cap_tokens']} tokens)"],
        ["accuracy, best-of-n by reward", rep.get("best_of_n_accuracy")],
        ["accuracy, reward-weighted vote", rep.get("weighted_vote_accuracy")],
        ["oracle (any correct answer in group)", rep["oracle_accuracy"]],
        *_signal_auroc_rows(metrics.get("signal_auroc")),
        ["trajectories without answer (no vote)", rep["n_without_answer"]],
        *_vote_test_rows(metrics),
    ]
    skip = f"skip max({metrics['skip_first']}, floor({metrics['skip_frac']:g} x length))" if metrics.get("skip_frac") else f"skip_first {metrics['skip_first']}"
    lead = "Accuracies and shares are 0 to 1 over the report problems; higher accuracy is better."
    if metrics["signal"] == "q":
        lead += " " + FILTER_Q_THRESHOLD
    return Summary(f"probekit filter ({metrics['signal']}, {skip})", ["metric", "value"], rows, wrap=("value",),
                   legend=legend([r[0] for r in rows], FILTER, lead))


def _vote_test_rows(metrics: dict) -> list[list]:
    """The vote tests (and, with --weighting softmax, Q-Probe's weighted accuracies) as rows of the filter summary."""
    rep = metrics["report"]
    tests = rep.get("vote_tests")
    if not tests:
        return []
    paired, tt = tests["paired"], tests["official_ttest"]
    rows = [["filtered vs majority, McNemar exact p (paired, per problem)", paired["p_value"]],
            ["  problems: both right / only filtered / only majority / both wrong",
             f"{paired['both_correct']} / {paired['only_filtered_correct']} / {paired['only_majority_correct']} / {paired['both_wrong']}"],
            [f"share correct filtered vs all, t-test p over {tt['n_problems']} problems (official Student / Welch)",
             f"{fmt_value(tt['student']['p_value'])} / {fmt_value(tt['welch']['p_value'])}"]]
    w = metrics.get("weighting") or {}
    if w.get("kind") == "softmax":
        name = f"softmax({w['score']}/{w['beta']:g})"
        rows += [[f"accuracy, best-of-n by {name} (expected)", rep["softmax_best_of_n_accuracy"]],
                 [f"accuracy, {name}-weighted vote", rep["softmax_vote_accuracy"]],
                 [f"accuracy, {name}-weighted vote, filtered", rep["softmax_vote_filtered_accuracy"]]]
    return rows


def _signal_auroc_rows(sa: dict | None) -> list[list[str]]:
    """The filter signal's AUROC and its length controls, as table rows."""
    if not sa:
        return []
    a = sa["auroc"]
    lc = a.get("length_controlled") or {}
    rows = [["AUROC of the per-solution minimum signal", fmt_ci(a)]]
    if "stratified" in lc:
        rows += [["  within length strata", fmt_ci(lc["stratified"])], ["  log length regressed out", fmt_ci(lc["residualised"])],
                 ["  beats length", {True: "yes", False: "no", None: "-"}[lc["beats_length"]]]]
    elif lc.get("note"):
        rows.append(["  length-controlled", lc["note"]])
    return rows


def demo_table(summary: dict) -> Summary:
    """One row per probe, then the trivial baselines."""
    rows = [
        [r["probe"], fmt_ci(r["auroc"]), fmt_ci(r["q_auroc"]), fmt_ci(r["pairwise_accuracy"]), fmt_pct(r["vote_accuracy"]),
         fmt_pct(r["vote_accuracy_filtered"]), f"{fmt_pct(r['tokens_saved'])} / {fmt_pct(r['tokens_saved_effective'])}",
         "" if r["beats_baselines"] in (True, None) else "no"]
        for r in summary["rows"]
    ]
    dim = set()
    for name, b in (summary.get("baselines") or {}).items():
        if b:
            dim.add(len(rows))
            rows.append([name, fmt_ci(b.get("auroc")), "-", fmt_ci(b.get("pairwise_accuracy")), "-", "-", "-", ""])
    return Summary(
        f"probekit demo: {summary['model']} layer {summary['layer']}, {summary['n_trajectories']} trajectories (test problems)",
        ["probe", "AUROC [95% CI]", "Q AUROC", "pairwise acc", "vote acc", "vote acc (filtered)", "tokens saved (official / effective)", "beats baselines"],
        rows, dim=dim, legend=DEMO_LEAD,
    )


def generation_table(generation: dict) -> Summary:
    """The demo's generation stage: plain sampling vs online early stopping, as generated, with the time split and why it differs."""
    rows = [[name, r["tokens_generated"], f"{r['seconds']:.1f}", *(f"{r[k]:.1f}" if k in r else "-" for k in ("seconds_decoding", "seconds_admitting")),
             fmt_pct(r["accuracy_per_sample"]), fmt_pct(r["vote_accuracy"]), r["n_stopped_early"], r["n_fallback_groups"]]
            for name, r in ((k, generation[k]) for k in ("plain", "filtered"))]
    decoding = f", {fmt_pct(generation['decoding_saved'])} of decoding time" if generation.get("decoding_saved") is not None else ""
    return Summary(
        f"generation in the loop (threshold {generation['threshold']:.3f}): {fmt_pct(generation['tokens_saved'])} of tokens{decoding} and "
        f"{fmt_pct(generation['wall_clock_saved'])} of wall-clock saved",
        ["run", "tokens", "wall s", "decoding s", "prefill s", "accuracy / sample", "vote accuracy", "stopped early", "fallback groups"], rows,
        legend="why: " + generation["why"] if generation.get("why") else "")
