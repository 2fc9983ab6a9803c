"""The ablation study's summary (benchmarks/ablations.py): configurations by seed, paired gains, the "beats length" verdict."""

from __future__ import annotations

import json

import pytest

from benchmarks.ablations import summarise, variant


def row(tmp_path, lam, seed, auroc, strat, resid, length_auroc=0.6, **axes):
    """A sweep row as run_sweep gives it, with a checkpoint folder whose metrics.json holds the length baseline."""
    ckpt = tmp_path / f"l{lam}-s{seed}-{'-'.join(axes.values()) or 'default'}"
    ckpt.mkdir()
    lc = {"stratified": {"value": 0.55}, "residualised": {"value": 0.5}}
    (ckpt / "metrics.json").write_text(json.dumps({"test": {"baselines": {"length": {
        "auroc": {"value": length_auroc, "length_controlled": lc}, "pairwise_accuracy": {"value": 0.62}}}}}))
    base = {"features": "single", "pooling": "last", "contrastive": None if lam == 0 else "official", "pairs": "group"}
    return {"lam": lam, "seed": seed, **base, **axes, "auroc": auroc, "auroc_lo": 0, "auroc_hi": 1, "auroc_strat": strat,
            "auroc_strat_lo": 0, "auroc_strat_hi": 1, "auroc_resid": resid, "auroc_resid_lo": 0, "auroc_resid_hi": 1,
            "pairwise_acc": 0.6, "q_auroc": 0.5, "beats_length": strat > 0.6, "seconds": 1.0, "checkpoint": str(ckpt)}


def test_gains_are_paired_by_seed_and_the_verdict_needs_both_controls_above_half(tmp_path):
    rows = []
    for seed, shift in enumerate((0.0, 0.02, 0.04, 0.06, 0.08)):
        rows.append(row(tmp_path, 0.0, seed, 0.60 + shift, 0.55 + shift, 0.48 + shift))
        rows.append(row(tmp_path, 0.0, seed, 0.70 + shift, 0.66 + shift, 0.64 + shift, pooling="mean"))  # +0.10, +0.11, +0.16
        rows.append(row(tmp_path, 0.5, seed, 0.61 + shift, 0.56 + shift, 0.45 + shift))
        rows.append(row(tmp_path, 0.5, seed, 0.61 + shift, 0.56 + shift, 0.45 + shift, contrastive="infonce"))
    assert [variant(r) for r in rows[:4]] == ["default", "pooling=mean", "default", "contrastive=infonce"]
    out = summarise("m", "arm", rows)
    table = {(t["lam"], t["configuration"]): t for t in out["table"]}
    assert list(table) == [(0.0, "default"), (0.0, "pooling=mean"), (0.5, "default"), (0.5, "contrastive=infonce")]
    mean = table[(0.0, "pooling=mean")]
    # every seed moves both arms alike: the paired gain is exact, with a zero-width interval
    assert mean["gain"]["auroc"]["mean"] == pytest.approx(0.10) and mean["gain"]["auroc"]["hi"] - mean["gain"]["auroc"]["lo"] < 1e-9
    assert mean["gain"]["auroc_resid"]["mean"] == pytest.approx(0.16) and mean["gain_over"] == "default, λ = 0"
    assert mean["beats_length"] and mean["runs_beating_length"] == "5/5"
    # the default at λ = 0.5 is compared with λ = 0; its residualised AUROC's lower bound is below 0.5: no verdict
    lam = table[(0.5, "default")]
    assert lam["gain_over"] == "default, λ = 0" and lam["gain"]["auroc"]["mean"] == pytest.approx(0.01)
    assert not lam["beats_length"] and not table[(0.0, "default")]["beats_length"]
    assert table[(0.5, "contrastive=infonce")]["gain"]["auroc"]["mean"] == pytest.approx(0.0)
    assert "gain" not in table[(0.0, "default")]
    assert out["length_baseline"]["auroc"]["mean"] == pytest.approx(0.6) and out["length_baseline"]["auroc_resid"]["mean"] == 0.5
    assert len(out["runs"]) == 20
