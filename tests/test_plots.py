"""The figures and the numbers behind their bands: group-bootstrap bands, aligned Q curves, and every PNG a command writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from probekit.filter.curves import aligned_matrix, class_band
from probekit.metrics import bootstrap_counts, group_mean_band
from tests.helpers import planted_store, trained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 20_000) -> None:
    """A real figure: the PNG signature, and big enough to hold drawn axes, curves and text (an empty figure is ~5 KB)."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG, path
    assert len(data) > min_bytes, (path, len(data))


# ---- the band: mean per column with a group-bootstrap interval ---------------------------------------
def test_group_mean_band_is_the_column_mean_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 6))
    values[rng.random(values.shape) < 0.2] = np.nan
    values[:, 5] = np.nan  # a column no row reaches
    groups = np.repeat(np.arange(10), 4)
    band = group_mean_band(values, groups, bootstrap_counts(10, 500, 0))
    assert np.allclose(band["mean"][:5], np.nanmean(values[:, :5], axis=0))
    assert list(band["n"]) == list(np.isfinite(values).sum(axis=0))
    assert (band["lo"][:5] <= band["mean"][:5]).all() and (band["mean"][:5] <= band["hi"][:5]).all()
    assert (band["hi"][:5] - band["lo"][:5] > 0.1).all()  # 40 normal draws: an interval of width ~0.6, not a point
    assert np.isnan(band["mean"][5]) and np.isnan(band["lo"][5]) and np.isnan(band["hi"][5])


def test_group_mean_band_resamples_groups_not_rows():
    """Copies of a row inside its group add no information: the band of 10 groups x 4 identical rows is the band of
    the 10 rows, while treating the 40 rows as independent would make it half as wide."""
    rng = np.random.default_rng(1)
    one = rng.normal(size=(10, 3))
    counts = bootstrap_counts(10, 2000, 3)
    alone = group_mean_band(one, np.arange(10), counts)
    copied = group_mean_band(np.repeat(one, 4, axis=0), np.repeat(np.arange(10), 4), counts)
    for k in ("mean", "lo", "hi"):
        assert np.allclose(alone[k], copied[k])
    as_rows = group_mean_band(np.repeat(one, 4, axis=0), np.arange(40), bootstrap_counts(40, 2000, 3))
    assert ((as_rows["hi"] - as_rows["lo"]) < 0.7 * (alone["hi"] - alone["lo"])).all()
    constant = group_mean_band(np.full((6, 2), 0.25), np.arange(6), bootstrap_counts(6, 100, 0))
    assert np.allclose(constant["lo"], 0.25) and np.allclose(constant["hi"], 0.25)


def test_aligned_matrix_shifts_each_trajectory_to_its_anchor():
    # three trajectories with 3, 2 and 4 stored positions (the second skips position 1)
    offsets = np.array([0, 3, 5, 9])
    positions = np.array([0, 1, 2, 0, 2, 0, 1, 2, 3])
    signal = np.arange(9, dtype=float)
    x, m = aligned_matrix(offsets, positions, signal, np.array([0, 1, 2]))
    assert list(x) == [0, 1, 2, 3]
    assert np.array_equal(np.nan_to_num(m, nan=-1), [[0, 1, 2, -1], [3, -1, 4, -1], [5, 6, 7, 8]])
    x, m = aligned_matrix(offsets, positions, signal, np.array([2, 0]), anchor=np.array([2, 1]))
    assert list(x) == [-2, -1, 0, 1]
    assert np.array_equal(np.nan_to_num(m, nan=-1), [[5, 6, 7, 8], [-1, 0, 1, 2]])


def test_class_band_aligned_at_the_first_error_shows_the_drop_where_it_happens():
    """Incorrect solutions whose Q falls from +1 to -1 at their own first wrong token (at different positions): aligned at
    it, the mean is ~+1 before 0 and ~-1 from 0 on; from the start, the drop is smeared over the spread of the errors."""
    rng = np.random.default_rng(2)
    lengths = rng.integers(20, 30, size=24)
    errors = rng.integers(4, 15, size=24)
    sig = np.concatenate([np.where(np.arange(t) < e, 1.0, -1.0) + 0.05 * rng.normal(size=t) for t, e in zip(lengths, errors)])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    positions = np.concatenate([np.arange(t) for t in lengths])
    rows, groups = np.arange(24), np.repeat(np.arange(8), 3)
    aligned = class_band(offsets, positions, sig, rows, groups, errors, n_boot=300)
    before, after = aligned["x"] < 0, aligned["x"] >= 0
    assert (aligned["mean"][before] > 0.8).all() and (aligned["mean"][after] < -0.8).all()
    assert (aligned["n"] >= 5).all() and aligned["n_trajectories"] == 24
    assert (aligned["lo"] <= aligned["mean"]).all() and (aligned["mean"] <= aligned["hi"]).all()
    start = class_band(offsets, positions, sig, rows, groups, 0, n_boot=300)
    middle = (start["x"] >= errors.min()) & (start["x"] < errors.max())
    assert (np.abs(start["mean"][middle]) < 0.95).any()  # some solutions already wrong, others not yet


# ---- the files the commands write ---------------------------------------------------------------------
def test_fit_and_eval_write_their_figures_and_the_per_fraction_intervals(tmp_path_factory, tmp_path):
    from probekit.eval.evaluate import evaluate_checkpoint, write_evaluation
    from probekit.outputs import claim_output
    from probekit.store import Store

    store, ckpt = trained(tmp_path_factory)
    assert_png(ckpt.path / "training.png")
    assert_png(ckpt.path / "prefix_auroc.png")
    m = evaluate_checkpoint(ckpt, Store(store), "test", n_boot=200)
    prefix = m["probe"]["prefix"]
    assert set(prefix["intervals"]) == {"reward_auroc", "q_auroc_mean", "q_auroc_kmeans"}
    for name, band in prefix["intervals"].items():
        assert len(band["lo"]) == len(band["hi"]) == len(prefix[name]) == 10
        for lo, point, hi in zip(band["lo"], prefix[name], band["hi"]):
            assert lo <= point <= hi, name
    # at the full completion, the prefix interval is the AUROC's own (same resamples)
    assert (prefix["intervals"]["reward_auroc"]["lo"][-1], prefix["intervals"]["reward_auroc"]["hi"][-1]) == (
        m["probe"]["auroc"]["lo"], m["probe"]["auroc"]["hi"])
    assert m["model"] == "test-model" and m["lam"] == ckpt.config["fit"]["loss"]["lam"]
    with claim_output(tmp_path / "ev", "eval", ("metrics.json", "prefix_auroc.png")) as out:
        write_evaluation(m, out)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["probe"]["prefix"]["intervals"] == json.loads(json.dumps(prefix["intervals"]))
    assert_png(tmp_path / "ev" / "prefix_auroc.png")


def test_filter_writes_the_frontier_with_intervals_and_the_q_curves(tmp_path_factory, tmp_path):
    from probekit.filter.config import FilterConfig
    from probekit.filter.filtering import filter_store
    from probekit.store import Store
    from tests.helpers import fit
    from tests.store_factory import make_store

    rng = np.random.default_rng(4)
    states, groups, labels, answers, errors = [], [], [], [], []
    v = np.zeros(16)
    v[0] = 1.0
    for g in range(24):
        for k in range(4):
            good = k < 2
            t = int(rng.integers(14, 22))
            err = -1 if good else int(rng.integers(4, 10))
            sign = np.ones(t) if good else np.where(np.arange(t) < err, 1.0, -1.0)
            states.append((sign[:, None] * v + 0.3 * rng.normal(size=(t, 16))).astype(np.float32))
            groups.append(f"g{g}")
            labels.append(int(good))
            answers.append("42" if good else str(k))
            errors.append(err)
    store = Store(make_store(tmp_path / "store", states, groups, labels, answers=answers, error_tokens=errors))
    ckpt = fit(store.path, tmp_path / "ck")
    m = filter_store(ckpt, store, tmp_path / "f", FilterConfig(threshold="auto", random_seeds=2))
    assert m["plots"] == ["frontier.png", "q_curves.png"]
    for row in m["thresholds"]:
        rep = row["report"]
        assert rep["accuracy_filtered_lo"] <= rep["accuracy_filtered"] <= rep["accuracy_filtered_hi"]
    report = m["report"]
    assert report["accuracy_majority_lo"] <= report["accuracy_majority"] <= report["accuracy_majority_hi"]
    assert report["accuracy_majority_hi"] - report["accuracy_majority_lo"] > 0 or report["accuracy_majority"] in (0.0, 1.0)
    assert_png(tmp_path / "f" / "frontier.png")
    assert_png(tmp_path / "f" / "q_curves.png", min_bytes=40_000)  # two panels: from the start, and aligned at the first error


def test_sweep_writes_its_summary_figure(tmp_path):
    from probekit.config import FitConfig, SweepConfig
    from probekit.sweep import run_sweep

    store = planted_store(tmp_path / "s", n_groups=12)
    opts = SweepConfig(template=FitConfig().vary(epochs=2, rep_size=8, n_boot=50), lams=(0.5,), widths=((8,),), ks=(2,), seeds=(0, 1))
    run_sweep(store, tmp_path / "sw", opts)
    assert_png(tmp_path / "sw" / "summary.png")
