"""Hostile-user cases for fit, eval and filter: a user's files are never replaced, bad input is one line with exit 2.

Each test drives the real console entry point (`probekit_cli.main.main`) and checks the
exit status, that stderr is one `error:` line without a traceback, and that
every file the user had is byte-for-byte unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import answered_store, assert_one_line_error, run_cli


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(store, checkpoint) of a quick fit through the CLI's library path."""
    from probekit.config import FitConfig
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    root = tmp_path_factory.mktemp("fitted")
    store = Store(answered_store(root / "store"))
    cfg = FitConfig().vary(epochs=3, n_boot=20, widths=(8,), rep_size=4)
    return store, fit_probe(store, root / "ckpt", cfg)


def hf_model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"weights the user cannot get back")
    (path / "README.md").write_text("my model")
    return path


# ---- 1. fit --out on a folder that is not a probekit checkpoint -------------------
def test_fit_refuses_a_model_folder_with_a_config_json(monkeypatch, capsys, tmp_path, fitted):
    store, _ = fitted
    folder = hf_model_folder(tmp_path / "my-model")
    before = snapshot(folder)
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store.path, "--out", folder, "--epochs", "1", "--no-progress")
    assert_one_line_error(code, err, str(folder))
    assert snapshot(folder) == before


def test_fit_overwrite_never_replaces_a_file_it_did_not_write(monkeypatch, capsys, tmp_path, fitted):
    store, _ = fitted
    folder = hf_model_folder(tmp_path / "my-model")
    before = snapshot(folder)
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store.path, "--out", folder, "--epochs", "1", "--overwrite", "--no-progress")
    assert_one_line_error(code, err, "config.json", "did not create")
    assert snapshot(folder) == before


def test_fit_overwrite_beside_unrelated_files_keeps_them(monkeypatch, capsys, tmp_path, fitted):
    store, _ = fitted
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store.path, "--out", folder, "--epochs", "1", "--n-boot", "10", "--overwrite", "--no-progress")
    assert code == 0, err
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "config.json").exists()
    # the same command may refit into its own output without --overwrite, and still keeps the user's file
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store.path, "--out", folder, "--epochs", "1", "--n-boot", "10", "--no-progress")
    assert code == 0, err
    assert (folder / "notes.txt").read_text() == "mine"


def test_fit_refuses_an_out_that_is_a_file(monkeypatch, capsys, tmp_path, fitted):
    store, _ = fitted
    target = tmp_path / "file.txt"
    target.write_text("x")
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store.path, "--out", target, "--no-progress")
    assert_one_line_error(code, err, "is a file")
    assert target.read_text() == "x"


# ---- 2. filter --out must not collide with inputs ------------------------------------
def test_filter_refuses_the_users_data_folder(monkeypatch, capsys, tmp_path, fitted):
    store, ckpt = fitted
    data = tmp_path / "data"
    data.mkdir()
    (data / "trajectories.jsonl").write_text('{"id": "a"}\n')
    (data / "pairs.jsonl").write_text("")
    before = snapshot(data)
    for extra in ([], ["--overwrite"]):
        code, err = run_cli(monkeypatch, capsys, "filter", "--ckpt", ckpt.path, "--store", store.path, "--out", data, "--no-plots", "--no-progress", *extra)
        if extra:  # beside the user's files, under names that are not theirs
            assert code == 0, err
            assert (data / "decisions.jsonl").exists()
        else:
            assert_one_line_error(code, err, str(data))
        assert {k: v for k, v in snapshot(data).items() if k in before} == before


@pytest.mark.parametrize("which", ["store", "ckpt"])
def test_filter_refuses_an_out_that_holds_its_inputs(monkeypatch, capsys, fitted, which):
    store, ckpt = fitted
    out = store.path if which == "store" else ckpt.path
    before = snapshot(Path(out))
    code, err = run_cli(monkeypatch, capsys, "filter", "--ckpt", ckpt.path, "--store", store.path, "--out", out, "--overwrite", "--no-progress")
    assert_one_line_error(code, err, "holds the input")
    assert snapshot(Path(out)) == before


# ---- 5. damaged checkpoints ------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated-weights", "garbage-goals", "config-missing-key", "config-not-json"])
def test_damaged_checkpoint_is_one_line(monkeypatch, capsys, tmp_path, fitted, damage):
    import shutil

    store, ckpt = fitted
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt.path, broken)
    if damage == "truncated-weights":
        w = broken / "weights.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "garbage-goals":
        (broken / "goals.safetensors").write_bytes(b"\x00garbage" * 50)
    elif damage == "config-missing-key":
        cfg = json.loads((broken / "config.json").read_text())
        del cfg["layer"]
        (broken / "config.json").write_text(json.dumps(cfg))
    else:
        (broken / "config.json").write_text("{not json")
    for args in (["eval", "--ckpt", broken, "--store", store.path, "--out", tmp_path / "ev"],
                 ["filter", "--ckpt", broken, "--store", store.path, "--out", tmp_path / "fl"]):
        code, err = run_cli(monkeypatch, capsys, *args, "--no-progress")
        assert_one_line_error(code, err, str(broken))
        assert "damaged checkpoint" in err or "malformed JSON" in err


# ---- 9. thresholds that can keep nothing or drop nothing --------------------------------
@pytest.mark.parametrize("threshold", ["5", "-1", "0.2,1.5"])
def test_filter_refuses_q_thresholds_outside_the_cosine_range(monkeypatch, capsys, tmp_path, fitted, threshold):
    store, ckpt = fitted
    code, err = run_cli(monkeypatch, capsys, "filter", "--ckpt", ckpt.path, "--store", store.path, "--out", tmp_path / "f",
                        f"--threshold={threshold}", "--no-progress")
    assert_one_line_error(code, err, "[-1, 1]")
    assert not (tmp_path / "f").exists()


def test_filter_says_when_a_threshold_drops_everything(tmp_path, fitted):
    from probekit.filter.config import FilterConfig
    from probekit.filter.filtering import filter_store

    store, ckpt = fitted
    m = filter_store(ckpt, store, tmp_path / "f", FilterConfig(threshold="1", skip_first=0, plots=False, random_seeds=1))
    assert m["report"]["dropped_share"] == 1.0
    assert m["report"]["tokens_saved_share_effective"] == 0.0  # everything fell back: nothing was really saved
    assert any("dropped every report trajectory" in w for w in m["warnings"])


# ---- 10. non-finite λ and a loss that becomes non-finite --------------------------------
@pytest.mark.parametrize("option", [["--lam", "inf"], ["--lam", "nan"], ["--lr", "inf"], ["--margin", "-inf"]])
def test_fit_refuses_non_finite_options_before_any_work(monkeypatch, capsys, tmp_path, fitted, option):
    store, _ = fitted
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store.path, "--out", tmp_path / "c", *option, "--no-progress")
    assert_one_line_error(code, err, option[0], "finite")
    assert not (tmp_path / "c").exists()


def test_a_loss_that_becomes_non_finite_stops_naming_the_epoch(monkeypatch, capsys, tmp_path, fitted):
    import probekit.probe.losses as losses

    store, _ = fitted
    real = losses.total_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss, terms = real(*a, **k)
        if calls["n"] > 3:  # past the first epoch (this store has 2-3 batches per epoch)
            loss = loss * float("nan")
            terms = {key: float("nan") for key in terms}
        return loss, terms

    monkeypatch.setattr(losses, "total_loss", poisoned)
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store.path, "--out", tmp_path / "c", "--epochs", "5", "--no-progress")
    assert_one_line_error(code, err, "diverged", "epoch 2")
    assert not (tmp_path / "c" / "config.json").exists()


# ---- 15. cross-store evaluation: baselines fitted where the probe was ---------------------
def test_cross_store_eval_fits_baselines_on_the_training_store(tmp_path):
    """On held-out data where shorter is better, the length baseline must say so (chosen on the training store)."""
    from probekit.config import FitConfig
    from probekit.eval.evaluate import evaluate_checkpoint
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    train = Store(answered_store(tmp_path / "train", n_groups=24, seed=1, shorter_better=True))
    other = Store(answered_store(tmp_path / "other", n_groups=12, seed=2, shorter_better=True))
    ckpt = fit_probe(train, tmp_path / "ckpt", FitConfig().vary(epochs=2, n_boot=20, widths=(8,), rep_size=4))
    m = evaluate_checkpoint(ckpt, other, "all", n_boot=50)
    length = m["baselines"]["length"]
    assert length["direction"] == "shorter"
    assert str(train.path) in length["selected_on"]
    assert length["auroc"]["value"] > 0.9
    for name in ("logistic_last", "logistic_mean"):
        assert m["baselines"][name]["auroc"]["value"] is not None, m["baselines"][name]
        assert str(train.path) in m["baselines"][name]["note"]
    assert m["baselines_fitted_on"] == str(train.path)


def test_cross_store_eval_without_the_training_store_says_so(tmp_path):
    import shutil

    from probekit.config import FitConfig
    from probekit.eval.evaluate import evaluate_checkpoint
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    train = Store(answered_store(tmp_path / "train", seed=3))
    other = Store(answered_store(tmp_path / "other", n_groups=8, seed=4))
    ckpt = fit_probe(train, tmp_path / "ckpt", FitConfig().vary(epochs=1, n_boot=10, widths=(8,), rep_size=4))
    shutil.rmtree(train.path)
    m = evaluate_checkpoint(ckpt, other, "all", n_boot=20)
    assert "not available" in m["baselines"]["length"]["note"] and "direction" not in m["baselines"]["length"]
    assert "not available" in m["baselines"]["logistic_last"]["note"]
    assert m["baselines"]["random"]["auroc"]["value"] is not None
    # the length controls are fitted on the training split too: not on the evaluated data
    assert "not available" in m["length_control"]["note"] and m["beats_length"] is None
    assert "not available" in m["probe"]["auroc"]["length_controlled"]["note"]
    from probekit_cli.tables import metric_rows

    assert any(r[0] == "probe reward, length-controlled" and "not available" in r[3] for r in metric_rows(m))


def test_a_store_re_extracted_in_place_is_not_taken_for_the_training_store(tmp_path):
    """Same path, other contents (cache key): the baselines must not be fitted on data the probe never saw."""
    import shutil

    from probekit.config import FitConfig
    from probekit.eval.evaluate import evaluate_checkpoint
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    path = tmp_path / "store"
    ckpt = fit_probe(Store(answered_store(path, seed=5)), tmp_path / "ckpt", FitConfig().vary(epochs=1, n_boot=10, widths=(8,), rep_size=4))
    shutil.rmtree(path)
    again = Store(answered_store(path, n_groups=10, seed=6))
    m = evaluate_checkpoint(ckpt, again, "all", n_boot=20)
    assert "not available" in m["baselines"]["length"]["note"] and m["baselines_fitted_on"] is None


def test_refit_without_an_evaluation_leaves_no_stale_plot(tmp_path, fitted):
    from probekit.config import FitConfig
    from probekit.pipeline import fit_probe

    store, _ = fitted
    out = tmp_path / "ck"
    fit_probe(store, out, FitConfig().vary(epochs=1, n_boot=10, widths=(8,), rep_size=4))
    assert (out / "prefix_auroc.png").exists()
    ckpt = fit_probe(store, out, FitConfig().vary(epochs=1, n_boot=10, widths=(8,), rep_size=4, valid_frac=0.0))
    assert "valid" not in ckpt.metrics and not (out / "prefix_auroc.png").exists()


def test_a_folder_whose_marker_another_rank_is_writing_can_be_claimed(tmp_path):
    """Two ranks of one extract claim the same --out: the other's in-flight marker (or output) temp file is probekit's own."""
    from probekit.errors import ProbekitError
    from probekit.outputs import MARKER, claim_output

    racing = tmp_path / "racing"
    racing.mkdir()
    (racing / f".{MARKER}.k2j3.tmp").write_text("{")
    (racing / ".manifest.json.x1.tmp").write_text("{")
    claim_output(racing, "extract", ("manifest.json",))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".notes.txt.x1.tmp").write_text("user's editor swap")
    with pytest.raises(ProbekitError, match="not empty"):
        claim_output(mine, "extract", ("manifest.json",))
