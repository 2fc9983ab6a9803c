"""The sweep grid: λ = 0 always present, goal kinds from one training run, mean ± std over seeds, outputs."""

from __future__ import annotations

import csv
import json

import pytest

from probekit_cli.tables import sweep_table
from probekit.config import FitConfig, parse_widths, parse_widths_list
from probekit.errors import ProbekitError
from probekit.config import SweepConfig
from probekit.sweep import run_name, run_sweep
from tests.helpers import planted_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = FitConfig().vary(epochs=3, rep_size=8, lr=3e-3, n_boot=50)


def test_parse_widths_list():
    assert parse_widths_list("64,256, 128x128,linear") == [(64,), (256,), (128, 128), ()]
    with pytest.raises(ProbekitError):
        parse_widths_list("12a")
    with pytest.raises(ProbekitError):
        parse_widths_list(",")
    # one syntax everywhere: `x` joins the layers of one encoder, a comma lists encoders (which only a sweep takes)
    assert parse_widths("256x128") == (256, 128) and parse_widths("linear") == ()
    with pytest.raises(ProbekitError, match="sweep"):
        parse_widths("256,128")


def test_sweep_grid_outputs_and_summary(tmp_path):
    store = planted_store(tmp_path / "s", n_groups=12)
    opts = SweepConfig(template=BASE, lams=(0.5,), widths=((8,),), ks=(2, 4), goals=("mean", "kmeans"), seeds=(0, 1), prototypes=2)
    result = run_sweep(store, tmp_path / "sw", opts)
    runs = result["runs"]
    # λ = 0 added; its runs ignore K (trained once per seed); λ = 0.5 runs for each K.
    assert sorted({r["lam"] for r in runs}) == [0.0, 0.5]
    assert len(runs) == (2 + 2 * 2) * 2  # (λ=0: 2 seeds; λ=0.5: 2 K × 2 seeds) × 2 goal kinds
    assert {r["K"] for r in runs if r["lam"] == 0} == {None}
    mean_row = next(r for r in runs if r["goal"] == "mean")
    km_row = next(r for r in runs if r["goal"] == "kmeans" and r["checkpoint"] == mean_row["checkpoint"])
    assert km_row["auroc"] == mean_row["auroc"]  # same training run, only Q differs
    assert mean_row["err_token_auroc"] is not None
    # beside each AUROC, its length controls, as in the run's metrics.json
    m = json.loads((tmp_path / "sw" / "runs" / run_name({"lam": 0.0, "layer": 2, "widths": (8,), "K": None, "seed": 0}) / "metrics.json").read_text())
    row0 = next(r for r in runs if r["lam"] == 0 and r["seed"] == 0 and r["goal"] == "mean")
    lc = m["valid"]["probe"]["auroc"]["length_controlled"]
    assert (row0["auroc_strat"], row0["auroc_resid_lo"]) == (lc["stratified"]["value"], lc["residualised"]["lo"])
    assert row0["beats_length"] == lc["beats_length"] and row0["q_auroc_beats_length"] is not None
    assert row0["q_auroc_strat"] == m["valid"]["probe"]["q_auroc_mean"]["length_controlled"]["stratified"]["value"]
    summary = result["summary"]
    assert len(summary) == (1 + 2) * 2 and all(s["n_seeds"] == 2 for s in summary)
    s0 = next(s for s in summary if s["lam"] == 0 and s["goal"] == "mean")
    vals = [r["auroc"] for r in runs if r["lam"] == 0 and r["goal"] == "mean"]
    assert s0["auroc_mean"] == pytest.approx(sum(vals) / 2)
    strat = [r["auroc_strat"] for r in runs if r["lam"] == 0 and r["goal"] == "mean"]
    assert s0["auroc_strat_mean"] == pytest.approx(sum(strat) / 2)
    assert s0["beats_length"] == f"{sum(r['beats_length'] for r in runs if r['lam'] == 0 and r['goal'] == 'mean')}/2"
    length = next(b for b in result["baselines"] if b["baseline"] == "length")
    assert length["auroc_resid_mean"] == pytest.approx(0.5)  # the check: log length, regressed on log length
    assert {b["baseline"] for b in result["baselines"]} == {"length", "logistic_last", "logistic_mean", "random"}
    with open(tmp_path / "sw" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(runs) and {"lam", "layer", "widths", "K", "goal", "seed", "auroc", "beats_baselines"} <= set(rows[0])
    saved = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(summary)) and 0.0 in saved["options"]["lams"]
    assert (tmp_path / "sw" / "runs" / run_name({"lam": 0.0, "layer": 2, "widths": (8,), "K": None, "seed": 1}) / "config.json").exists()
    table = sweep_table(result)
    assert table.row_count == len(summary) + len(result["baselines"])


def test_sweep_rejects_bad_options(tmp_path):
    store = planted_store(tmp_path / "s", n_groups=4)
    with pytest.raises(ProbekitError, match="--goal"):
        run_sweep(store, tmp_path / "o", SweepConfig(goals=("median",)))
    with pytest.raises(ProbekitError, match="prototypes"):
        run_sweep(store, tmp_path / "o", SweepConfig(goals=("kmeans",), prototypes=1))
    with pytest.raises(ProbekitError, match="layer 9"):
        run_sweep(store, tmp_path / "o", SweepConfig(layers=(9,)))
    with pytest.raises(ProbekitError, match="--lam"):
        run_sweep(store, tmp_path / "o", SweepConfig(lams=(float("inf"),)))


def test_cli_sweep_json(tmp_path):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401
    from probekit_cli.app import app

    store = planted_store(tmp_path / "s", n_groups=8)
    res = CliRunner().invoke(app, ["sweep", "--store", str(store), "--out", str(tmp_path / "sw"), "--lam", "1", "--widths", "linear",
                                   "--k", "2", "--seeds", "0", "--epochs", "2", "--rep-size", "4", "--n-boot", "20", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert sorted({r["lam"] for r in out["runs"]}) == [0.0, 1.0] and out["runs"][0]["widths"] == "linear"


def test_sweep_resumes_finished_runs_and_refits_changed_ones(tmp_path, monkeypatch):
    import dataclasses

    import probekit.sweep as sweep_mod

    store = planted_store(tmp_path / "store")
    opts = SweepConfig(template=FitConfig().vary(epochs=2, n_boot=20), lams=(0.5,), seeds=(0,))
    first = run_sweep(store, tmp_path / "sw", opts)
    calls = []
    real_fit = sweep_mod.fit_probe
    monkeypatch.setattr(sweep_mod, "fit_probe", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    again = run_sweep(store, tmp_path / "sw", opts)
    assert calls == []  # every run was loaded, none refit
    assert [r["auroc"] for r in again["runs"]] == [r["auroc"] for r in first["runs"]]
    run_sweep(store, tmp_path / "sw", dataclasses.replace(opts, template=FitConfig().vary(epochs=3, n_boot=20)))
    assert len(calls) == len(first["runs"])  # a changed option refits every run


def test_cli_sweep_says_its_layers_lambdas_seeds_and_runs_before_the_first_fit(tmp_path, monkeypatch, capsys):
    """Without --layers a sweep runs every store layer: it says so (and how many runs) before it fits, on stderr, so into a log too."""
    from probekit.store import Store
    from tests.helpers import run_cli

    store = planted_store(tmp_path / "s", n_groups=8)
    layers = list(Store(store).layers)
    monkeypatch.setenv("COLUMNS", "200")
    code, err = run_cli(monkeypatch, capsys, "sweep", "--store", store, "--out", tmp_path / "sw", "--lam", "1", "--widths", "linear",
                        "--k", "2", "--seeds", "0,1", "--epochs", "2", "--rep-size", "4", "--n-boot", "20", "--no-progress")
    assert code == 0, err
    n_runs = len(layers) * 2 * 2  # layers x (λ 0 and 1) x 2 seeds
    said = f"sweep: {n_runs} runs: layers {', '.join(map(str, layers))} (every layer of the store), λ 0, 1, seeds 0, 1"
    assert said in " ".join(err.split())
    assert err.index("sweep:") < err.index("probekit sweep (")  # before the results table
    saved = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert len({r["checkpoint"] for r in saved["runs"]}) == n_runs and saved["options"]["layers"] == layers
    code, err = run_cli(monkeypatch, capsys, "sweep", "--store", store, "--out", tmp_path / "sw2", "--layers", str(layers[-1]), "--lam", "1",
                        "--widths", "linear", "--k", "2", "--seeds", "0", "--epochs", "2", "--rep-size", "4", "--n-boot", "20", "--no-progress")
    assert code == 0, err
    assert f"sweep: 2 runs: layers {layers[-1]} (--layers)" in " ".join(err.split())
