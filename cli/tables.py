"""Every table a person reads: the one place that formats intervals, percentages and metric rows."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from probekit.config import ablation_name
from probekit_cli.common import rich_table


def fmt_ci(m: dict | None) -> str:
    """'0.612 [0.580, 0.645]' for a metric with a 95% interval, '0.612' without one, '-' when undefined."""
    if not m or m.get("value") is None:
        return "-"
    if m.get("lo") is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


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
        signals.append(("length", length["auroc"], "check: ≈ 0.5 when the controls remove length"))
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
        rows.append([f"{name}, within length strata", fmt_ci(strata), "-",
                     check or f"{strata.get('n_strata', 0)} strata, {strata.get('n_pairs', 0)} same-stratum pairs"])
        rows.append([f"{name}, log length regressed out", fmt_ci(lc["residualised"]), "-", check or verdict])
    return rows


def metrics_table(metrics: dict, title: str | None = None):
    title = title or (f"probekit eval: {metrics['split']} split ({metrics['n_trajectories']} trajectories, "
                      f"{metrics['n_pairs']} pairs, {metrics['n_groups']} groups)")
    return rich_table(title, ["method", "AUROC [95% CI]", "pairwise acc [95% CI]", "note"], metric_rows(metrics))


def fmt_length(s: dict, prefix: str) -> str:
    """'strat / resid' mean ± std of an AUROC's length controls, from a sweep summary row."""
    if s.get(f"{prefix}_strat_mean") is None and s.get(f"{prefix}_resid_mean") is None:
        return "-"
    return " / ".join(fmt_pm(s.get(f"{prefix}_{k}_mean"), s.get(f"{prefix}_{k}_std")) for k in ("strat", "resid"))


def sweep_table(result: dict):
    """One row per configuration (mean ± std over seeds), then the baselines."""
    rows: list[list[Any]] = []
    for s in result["summary"]:
        rows.append([f"{s['lam']:g}", s["layer"], s["widths"], "-" if s["K"] is None else s["K"], ablation_name(s) or "-", s["goal"], s["n_seeds"],
                     fmt_pm(s["pairwise_acc_mean"], s["pairwise_acc_std"]), fmt_pm(s["auroc_mean"], s["auroc_std"]),
                     fmt_length(s, "auroc"), fmt_pm(s["q_auroc_mean"], s["q_auroc_std"]), fmt_length(s, "q_auroc"),
                     fmt_pm(s["err_token_auroc_mean"], s["err_token_auroc_std"]),
                     f"{s['beats_baselines'] or '-'} ; {s['beats_length'] or '-'}"])
    for b in result["baselines"]:
        name = b["baseline"] + (f" ({b['direction']})" if b.get("direction") else "")
        rows.append(["baseline", b["layer"], name, "", "", "", b["n_seeds"], fmt_pm(b["pairwise_acc_mean"], b["pairwise_acc_std"]),
                     fmt_pm(b["auroc_mean"], b["auroc_std"]), fmt_length(b, "auroc"), "", "", "", ""])
    split = result["options"]["split"]
    return rich_table(f"probekit sweep ({split} split, mean ± std over seeds; length-controlled: within length strata / log length regressed out)",
                      ["λ", "layer", "encoder", "K", "ablation", "goal", "seeds", "pair acc", "AUROC", "AUROC, length-controlled", "Q AUROC",
                       "Q, length-controlled", "err AUROC", "beats baselines ; length"], rows)


def filter_table(metrics: dict):
    rep = metrics["report"]
    base = rep["baselines"]
    rows = [
        ["report groups / trajectories", f"{rep['n_groups']} / {rep['n_trajectories']}"],
        ["threshold", metrics["chosen_threshold"]],
        ["accuracy, majority vote (no filter)", rep["accuracy_majority"]],
        ["accuracy, filtered majority vote", rep["accuracy_filtered"]],
        ["share of trajectories dropped", rep["dropped_share"]],
        ["share of tokens saved (official count)", rep["tokens_saved_share"]],
        ["share of tokens saved (fallback groups count as generated)", rep["tokens_saved_share_effective"]],
        ["groups that fell back to all trajectories", rep["fallback_groups"]],
        ["accuracy, random drops at same budget", f"{base['random']['accuracy']:.4f} ± {base['random']['accuracy_std']:.4f}"],
        ["accuracy, length cap at same budget", f"{base['length']['accuracy']:.4f} (cap {base['length']['cap_tokens']} tokens)"],
        ["accuracy, best-of-n by reward", rep.get("best_of_n_accuracy", float("nan"))],
        ["accuracy, reward-weighted vote", rep.get("weighted_vote_accuracy", float("nan"))],
        ["oracle (any correct answer in group)", rep["oracle_accuracy"]],
        *_signal_auroc_rows(metrics.get("signal_auroc")),
        ["trajectories without answer (no vote)", rep["n_without_answer"]],
    ]
    return rich_table(f"probekit filter ({metrics['signal']}, skip_first {metrics['skip_first']})", ["metric", "value"], rows)


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


def demo_table(summary: dict):
    """One row per probe, then the trivial baselines."""
    rows = [
        [r["probe"], fmt_ci(r["auroc"]), fmt_ci(r["q_auroc"]), fmt_ci(r["pairwise_accuracy"]), fmt_pct(r["vote_accuracy"]),
         fmt_pct(r["vote_accuracy_filtered"]), f"{fmt_pct(r['tokens_saved'])} / {fmt_pct(r['tokens_saved_effective'])}",
         "" if r["beats_baselines"] in (True, None) else "no"]
        for r in summary["rows"]
    ]
    for name, b in (summary.get("baselines") or {}).items():
        if b:
            rows.append([Text(name, style="dim"), fmt_ci(b.get("auroc")), "-", fmt_ci(b.get("pairwise_accuracy")), "-", "-", "-", ""])
    return rich_table(
        f"probekit demo: {summary['model']} layer {summary['layer']}, {summary['n_trajectories']} trajectories (test problems)",
        ["probe", "AUROC [95% CI]", "Q AUROC", "pairwise acc", "vote acc", "vote acc (filtered)", "tokens saved (official / effective)", "beats baselines"],
        rows,
    )


def generation_table(generation: dict):
    """The demo's generation stage: plain sampling vs online early stopping, as generated."""
    rows = [[name, r["tokens_generated"], f"{r['seconds']:.1f}", fmt_pct(r["accuracy_per_sample"]), fmt_pct(r["vote_accuracy"]),
             r["n_stopped_early"], r["n_fallback_groups"]] for name, r in ((k, generation[k]) for k in ("plain", "filtered"))]
    return rich_table(
        f"generation in the loop (threshold {generation['threshold']:.3f}): {fmt_pct(generation['tokens_saved'])} of tokens and "
        f"{fmt_pct(generation['wall_clock_saved'])} of wall-clock saved",
        ["run", "tokens", "seconds", "accuracy / sample", "vote accuracy", "stopped early", "fallback groups"], rows)
