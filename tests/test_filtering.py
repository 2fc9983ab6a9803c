"""Q-value filtering on hand-made trajectories, threshold selection, end to end and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probekit.filter.early_stop import apply_threshold, min_signal, segment_min
from probekit.errors import ProbekitError
from probekit.filter.config import FilterConfig
from probekit.filter.thresholds import parse_thresholds, selection_and_report_groups, threshold_grid
from probekit.filter.thresholds import threshold_sweep as sweep
from probekit.filter.voting import Ballot

ROOT = Path(__file__).resolve().parents[1]


def _ragged(trajs):
    """[(positions, q, completion_tokens)] -> offsets, positions, q, completion."""
    offsets = np.concatenate([[0], np.cumsum([len(p) for p, _, _ in trajs])])
    pos = np.concatenate([np.asarray(p) for p, _, _ in trajs]).astype(np.int32)
    q = np.concatenate([np.asarray(v, float) for _, v, _ in trajs]).astype(np.float32)
    return offsets, pos, q, np.array([c for _, _, c in trajs])


# A: dips below 0 only before skip_first -> kept
# B: first eligible dip at position 6 (of 8 tokens) -> dropped, saves 8 - 7 = 1
# C: stride-3 positions, dip at stored position 6 (of 12 tokens) -> saves 5
# D: 3 tokens, all below threshold but all before skip_first -> kept
# E: dip exactly at skip_first (5) -> dropped there, saves 10 - 6 = 4
TRAJS = [
    (range(10), [0.5, 0.5, -1.0, 0.5, 0.5, 0.5, 0.4, 0.5, 0.5, 0.6], 10),
    (range(8), [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -0.2, -0.5], 8),
    ([0, 3, 6, 9, 11], [0.1, 0.1, -0.1, 0.3, -0.3], 12),
    (range(3), [-1.0, -1.0, -1.0], 3),
    (range(10), [0.2] * 5 + [-0.1] + [0.9] * 4, 10),
]


def test_apply_threshold_hand_made():
    offsets, pos, q, comp = _ragged(TRAJS)
    res = apply_threshold(offsets, pos, q, comp, 0.0, skip_first=5)
    assert res.kept.tolist() == [True, False, False, True, False]
    assert res.first_drop_position.tolist() == [-1, 6, 6, -1, 5]
    assert res.saved_tokens.tolist() == [0, 1, 5, 0, 4]
    assert res.n_tokens.tolist() == [10, 8, 12, 3, 10]
    mins = min_signal(offsets, pos, q, 5)
    np.testing.assert_allclose(mins, [0.4, -0.5, -0.3, np.inf, -0.1], rtol=1e-6)
    # kept <=> min over eligible tokens >= threshold, for any threshold
    for t in (-1.0, -0.2, 0.0, 0.45, 1.0):
        assert apply_threshold(offsets, pos, q, comp, t, 5).kept.tolist() == (mins >= t).tolist()


def test_skip_first_zero_and_higher_thresholds():
    offsets, pos, q, comp = _ragged(TRAJS)
    res = apply_threshold(offsets, pos, q, comp, 0.0, skip_first=0)
    assert res.first_drop_position.tolist() == [2, 6, 6, 0, 5]
    assert res.saved_tokens.tolist() == [7, 1, 5, 2, 4]
    res = apply_threshold(offsets, pos, q, comp, 0.45, skip_first=5)
    assert res.first_drop_position.tolist() == [6, 6, 6, -1, 5]


def test_segment_min_with_empty_segment():
    vals = np.array([3, 1, 2, 5], np.int64)
    out = segment_min(vals, np.array([0, 2, 2, 4]), 99)
    assert out.tolist() == [1, 99, 2]


def test_filter_then_vote_known_accuracy():
    # group x: A (answer 1, label 1) kept, B and C (answer 2, label 0) dropped -> filtered vote "1" correct,
    # plain vote "2" wrong; group y: D kept alone; E dropped.
    offsets, pos, q, comp = _ragged(TRAJS)
    ballot = Ballot(["x", "x", "x", "y", "y"], ["1", "2", "2", "4", "5"], [1, 0, 0, 0, 1])
    out = sweep(offsets, pos, q, comp, ballot, [0.0], [], ["x", "y"], skip_first=5,
                last_reward=np.array([0.0, 1.0, 1.0, 0.0, 3.0]), n_random_seeds=2)
    rep = out["report"]
    assert rep["accuracy_majority"] == 0.0  # x: "2" wrong; y: tie "4"/"5" -> earliest voter's "4", wrong
    assert rep["accuracy_filtered"] == 0.5  # x right, y: only D kept -> "4" wrong
    assert rep["dropped_share"] == pytest.approx(3 / 5)
    assert rep["tokens_saved_share"] == pytest.approx(10 / 43)
    assert rep["saved_tokens"] == 10
    assert rep["best_of_n_accuracy"] == 0.5  # x: B (wrong), y: E (right)
    assert rep["fallback_groups"] == 0
    assert set(rep["baselines"]) == {"random", "length"}
    assert rep["baselines"]["random"]["tokens_saved_share"] == pytest.approx(10 / 43)


def test_all_dropped_group_falls_back_to_all():
    offsets, pos, q, comp = _ragged([(range(8), [-1.0] * 8, 8)] * 3)
    ballot = Ballot(["g", "g", "g"], ["7", "3", "3"], [0, 1, 1])
    out = sweep(offsets, pos, q, comp, ballot, [0.0], [], ["g"], skip_first=5)
    assert out["report"]["dropped_share"] == 1.0 and out["report"]["fallback_groups"] == 1
    assert out["report"]["accuracy_filtered"] == 1.0  # "3" wins over all three
    assert out["report"]["saved_tokens"] == 3 * (8 - 6)
    # The official count calls those tokens saved; the effective share does not, since the
    # fallback vote needed all three solutions in full.
    assert out["report"]["tokens_saved_share"] == pytest.approx(6 / 24)
    assert out["report"]["tokens_saved_share_effective"] == 0.0


def test_auto_threshold_prefers_real_savings_over_fallback_savings():
    # One selection group, two correct solutions with the same answer: every threshold votes right.
    # 0.3 drops only the second (dip to 0.2 at position 6): real savings. 0.9 drops both: the group
    # falls back to voting over all, so its larger "official" savings were never real.
    trajs = [(range(10), [0.5] * 10, 10), (range(10), [0.5] * 6 + [0.2] * 4, 10)]
    offsets, pos, q, comp = _ragged(trajs)
    ballot = Ballot(["t", "t"], ["4", "4"], [1, 1])
    out = sweep(offsets, pos, q, comp, ballot, [0.3, 0.9], ["t"], [], skip_first=5)
    table = {row["threshold"]: row["selection"] for row in out["table"]}
    assert table[0.3]["accuracy_filtered"] == table[0.9]["accuracy_filtered"] == 1.0
    assert table[0.9]["tokens_saved_share"] > table[0.3]["tokens_saved_share"] > 0
    assert table[0.9]["tokens_saved_share_effective"] == 0.0
    assert table[0.3]["tokens_saved_share_effective"] == table[0.3]["tokens_saved_share"]
    assert out["chosen_threshold"] == 0.3


def test_parse_thresholds():
    assert parse_thresholds("auto") is None
    assert parse_thresholds("0") == [0.0]
    assert parse_thresholds("0.2, 0.1,0.2") == [0.1, 0.2]
    with pytest.raises(ProbekitError):
        parse_thresholds("zero")


def test_threshold_grid_includes_zero_and_quantiles():
    grid = threshold_grid(np.array([0.1, 0.2, 0.3, np.inf]), levels=(0.0, 0.5, 1.0))
    assert grid == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_selection_and_report_groups():
    groups = [f"g{i}" for i in range(10)]
    ck = {"train": ["g0", "g1"], "valid": ["g2", "g3"], "test": ["g4"]}
    s = selection_and_report_groups(groups, ck, need_selection=True)
    assert s["selection"] == ["g2", "g3"] and s["excluded_train"] == ["g0", "g1"]
    assert sorted(s["report"]) == [f"g{i}" for i in range(4, 10)] and s["selection_source"] == "checkpoint-valid"
    s1 = selection_and_report_groups(groups, {"train": ["zz"], "valid": ["yy"]}, need_selection=True, valid_frac=0.3, seed=1)
    s2 = selection_and_report_groups(groups, {"train": ["zz"], "valid": ["yy"]}, need_selection=True, valid_frac=0.3, seed=1)
    assert s1 == s2 and len(s1["selection"]) == 3 and not set(s1["selection"]) & set(s1["report"])
    s = selection_and_report_groups(groups, None, need_selection=False)
    assert s["selection"] == [] and len(s["report"]) == 10
    with pytest.raises(ProbekitError, match="no groups left to report on"):
        selection_and_report_groups(["g0", "g1"], {"train": ["g0", "g1"]}, need_selection=False)


def _synthetic(seed, n_groups=40, per_group=6, t_len=20):
    """Groups where correct trajectories keep Q high and wrong ones dip late."""
    rng = np.random.default_rng(seed)
    trajs, groups, answers, labels = [], [], [], []
    for g in range(n_groups):
        for k in range(per_group):
            good = rng.random() < 0.4
            q = rng.normal(0.3 if good else 0.0, 0.2, size=t_len)
            trajs.append((range(t_len), q, t_len))
            groups.append(f"g{g:02d}")
            answers.append("42" if good else str(rng.integers(0, 3)))
            labels.append(int(good))
    return trajs, groups, answers, labels


def test_auto_threshold_never_looks_at_report_groups():
    trajs, groups, answers, labels = _synthetic(0)
    sel = [f"g{g:02d}" for g in range(15)]
    rep = [f"g{g:02d}" for g in range(15, 40)]
    offsets, pos, q, comp = _ragged(trajs)
    a = sweep(offsets, pos, q, comp, Ballot(groups, answers, labels), None, sel, rep, skip_first=5, n_random_seeds=1)
    # scramble everything about the report groups: Q-values, answers, labels
    rng = np.random.default_rng(1)
    is_rep = np.isin(groups, rep)
    rows_rep = np.repeat(is_rep, np.diff(offsets))
    q2 = q.copy()
    q2[rows_rep] = rng.normal(-0.5, 1.0, size=rows_rep.sum())
    answers2 = [str(rng.integers(0, 5)) if r else a_ for a_, r in zip(answers, is_rep)]
    labels2 = [int(rng.random() < 0.5) if r else l_ for l_, r in zip(labels, is_rep)]
    b = sweep(offsets, pos, q2, comp, Ballot(groups, answers2, labels2), None, sel, rep, skip_first=5, n_random_seeds=1)
    assert a["thresholds"] == b["thresholds"]
    assert a["chosen_threshold"] == b["chosen_threshold"]
    assert [r["selection"] for r in a["table"]] == [r["selection"] for r in b["table"]]
    assert 0.0 in a["thresholds"] and len(a["thresholds"]) > 5
    # the chosen one is the best on the selection groups
    best = max(r["selection"]["accuracy_filtered"] for r in a["table"])
    chosen_row = next(r for r in a["table"] if r["threshold"] == a["chosen_threshold"])
    assert chosen_row["selection"]["accuracy_filtered"] == best


# ---- end to end: a store with a planted signal and a hand-built checkpoint ----------------

HIDDEN = 8
ERROR_AT = 7


def _planted_store(path, model_name="test-model", answers=True, seed=0):
    """10 groups x 5: two correct ("42", direction +v throughout), three wrong ("7", +v then -v from
    position ERROR_AT), so the plain vote is wrong and the Q-filtered vote right."""
    from tests.store_factory import make_store

    rng = np.random.default_rng(seed)
    v = np.zeros(HIDDEN)
    v[0] = 1.0
    states, groups, labels, ans = [], [], [], []
    for g in range(10):
        for k in range(5):
            good = k in (1, 3)
            t_len = int(rng.integers(12, 20))
            sign = np.ones(t_len)
            if not good:
                sign[ERROR_AT:] = -1.0
            states.append(sign[:, None] * v + 0.05 * rng.normal(size=(t_len, HIDDEN)))
            groups.append(f"g{g}")
            labels.append(int(good))
            ans.append(("42" if good else "7") if answers else None)
    return make_store(path, states, groups, labels, answers=ans, model_name=model_name, shard_size=8)


def _identity_checkpoint(path, store, kmeans=False):
    import torch

    from probekit.outputs import claim_output
    from probekit.probe.checkpoint import save_checkpoint, store_info
    from probekit.probe.network import ProbeModel

    model = ProbeModel(HIDDEN, encoder="linear", rep_size=HIDDEN, head="linear")
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(HIDDEN))
        model.encoder[0].bias.zero_()
        model.head[0].weight.zero_()
        model.head[0].weight[0, 0] = 3.0
        model.head[0].bias.zero_()
    goal = np.zeros((1, HIDDEN), np.float32)
    goal[0, 0] = 1.0
    goals = {"mean": goal}
    if kmeans:
        goals["kmeans"] = np.concatenate([goal, -goal])
    split = {"train": ["g0", "g1", "g2"], "valid": ["g3", "g4", "g5"], "test": ["g6", "g7", "g8", "g9"]}
    return save_checkpoint(claim_output(path, "fit"), model, {"layer": 2, "store": store_info(store)}, goals, split, {}).path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from probekit.store import Store

    root = tmp_path_factory.mktemp("filter")
    store = Store(_planted_store(root / "store"))
    ckpt_dir = _identity_checkpoint(root / "ckpt", store)
    return root, store, ckpt_dir


def test_end_to_end_filter_store(planted):
    from probekit.filter.filtering import filter_store
    from probekit.io import iter_jsonl
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.probe.scoring import Scorer, score_blocks

    root, store, ckpt_dir = planted
    ckpt = load_checkpoint(ckpt_dir)
    scores = score_blocks(Scorer.from_checkpoint(ckpt), store.iter_shards(2, as_float32=False), store.n_rows, batch_rows=7)  # batches < a shard
    assert scores.q["mean"].shape == (store.n_rows,)
    direct = store.load_layer(2)
    np.testing.assert_allclose(scores.q["mean"], direct[:, 0] / np.linalg.norm(direct, axis=1), atol=1e-5)
    np.testing.assert_allclose(scores.reward, 3.0 * direct[:, 0], atol=1e-5)

    out = root / "out"
    m = filter_store(ckpt, store, out, FilterConfig(threshold="auto", skip_first=5, random_seeds=2))
    rep = m["report"]
    assert m["groups"]["selection_source"] == "checkpoint-valid"
    assert m["groups"]["selection"] == ["g3", "g4", "g5"] and m["groups"]["excluded_train"] == ["g0", "g1", "g2"]
    assert m["groups"]["report"] == ["g6", "g7", "g8", "g9"]
    assert rep["n_groups"] == 4 and rep["n_trajectories"] == 20
    assert rep["accuracy_majority"] == 0.0 and rep["accuracy_filtered"] == 1.0
    assert rep["best_of_n_accuracy"] == 1.0 and rep["oracle_accuracy"] == 1.0
    # accuracy ties on the selection groups go to the threshold saving the most tokens
    best = max((r["selection"]["accuracy_filtered"], r["selection"]["tokens_saved_share"]) for r in m["thresholds"])
    chosen = next(r for r in m["thresholds"] if r["threshold"] == m["chosen_threshold"])
    assert (chosen["selection"]["accuracy_filtered"], chosen["selection"]["tokens_saved_share"]) == best
    assert rep["dropped_share"] >= 0.6
    assert json.loads((out / "metrics.json").read_text())["chosen_threshold"] == m["chosen_threshold"]
    for png in ("frontier.png", "q_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # threshold 0: exactly the wrong trajectories are dropped, at their error position
    out0 = root / "out0"
    m0 = filter_store(ckpt, store, out0, FilterConfig(threshold="0", skip_first=5, plots=False, random_seeds=2))
    rep0 = m0["report"]
    assert m0["threshold_mode"] == "fixed" and m0["groups"]["n_report"] == 4 and m0["groups"]["n_selection"] == 3
    assert rep0["accuracy_filtered"] == 1.0 and rep0["dropped_share"] == pytest.approx(0.6)
    recs = [r for _, r in iter_jsonl(out0 / "decisions.jsonl")]
    assert not (out0 / "trajectories.jsonl").exists()  # never an input file's name
    assert len(recs) == 50 and {r["split"] for r in recs} == {"train", "selection", "report"}
    lens = store.meta.completion_tokens
    for i, r in enumerate(recs):
        assert r["id"] == f"t{i}" and r["n_tokens"] == lens[i]
        if r["label"] == 1:
            assert r["kept"] and r["first_drop_position"] == -1 and r["saved_tokens"] == 0 and r["answer"] == "42"
        else:
            assert not r["kept"] and r["first_drop_position"] == ERROR_AT
            assert r["saved_tokens"] == lens[i] - ERROR_AT - 1
    total = sum(r["n_tokens"] for r in recs if r["split"] == "report")
    saved = sum(r["saved_tokens"] for r in recs if r["split"] == "report")
    assert rep0["tokens_saved_share"] == pytest.approx(saved / total)
    assert rep0["baselines"]["random"]["tokens_saved_share"] == pytest.approx(saved / total)

    # the reward head separates them too
    m2 = filter_store(ckpt, store, root / "out2", FilterConfig(threshold="0", signal="reward", plots=False, random_seeds=1))
    assert m2["report"]["accuracy_filtered"] == 1.0 and m2["report"]["dropped_share"] == pytest.approx(0.6)


def test_filter_errors(planted, tmp_path):
    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    root, store, ckpt_dir = planted
    ckpt = load_checkpoint(ckpt_dir)
    with pytest.raises(ProbekitError, match="no kmeans goal prototypes; re-fit with --goal-prototypes K"):
        filter_store(ckpt, store, tmp_path / "o", FilterConfig(goal="kmeans"))
    no_answers = Store(_planted_store(tmp_path / "noans", answers=False))
    with pytest.raises(ProbekitError, match="store has no answers: voting needs the `answer` field"):
        filter_store(ckpt, no_answers, tmp_path / "o")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "probekit", "filter", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_cli_mismatching_store_is_a_one_line_error(planted, tmp_path):
    root, store, ckpt_dir = planted
    other = _planted_store(tmp_path / "other", model_name="another-model")
    proc = _cli("--ckpt", ckpt_dir, "--store", other, "--out", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "another-model" in lines[0] and "test-model" in lines[0]
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_cli_runs_with_json(planted, tmp_path):
    root, store, ckpt_dir = planted
    proc = _cli("--ckpt", ckpt_dir, "--store", store.path, "--out", tmp_path / "o", "--threshold", "0,0.5", "--json", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["report"]["accuracy_filtered"] == 1.0
    assert "excluded from the report" in proc.stderr


def test_auto_threshold_for_online_stopping_is_the_filters_auto_choice(planted, tmp_path):
    """`generate --threshold auto` picks, before sampling, what `filter --threshold auto` picks on the checkpoint's training store."""
    from probekit.filter.filtering import auto_threshold, filter_store
    from probekit.probe.checkpoint import load_checkpoint

    root, store, ckpt_dir = planted
    ckpt = load_checkpoint(ckpt_dir)
    m = filter_store(ckpt, store, tmp_path / "f", FilterConfig(threshold="auto", skip_first=5, plots=False, random_seeds=1))
    chosen = auto_threshold(ckpt, "mean", skip_first=5)
    assert chosen["threshold"] == m["chosen_threshold"]
    assert [r["threshold"] for r in chosen["table"]] == [r["threshold"] for r in m["thresholds"]]
    assert [r["selection"] for r in chosen["table"]] == [r["selection"] for r in m["thresholds"]]
    assert chosen["chosen_on"].startswith("3 validation groups")

    no_valid = load_checkpoint(ckpt_dir)
    no_valid.split = {**no_valid.split, "valid": []}
    with pytest.raises(ProbekitError, match="no validation groups"):
        auto_threshold(no_valid)
    gone = load_checkpoint(ckpt_dir)
    gone.config = {**gone.config, "store": {**gone.config["store"], "path": str(tmp_path / "nowhere")}}
    with pytest.raises(ProbekitError, match="training store .* is gone"):
        auto_threshold(gone)


def test_filter_reports_how_well_its_signal_ranks_solutions_with_length_controls(planted, tmp_path):
    """The per-solution minimum Q separates the planted wrong solutions (low Q after their error) from the right ones,
    in raw AUROC and within length strata; the controls are fitted on the checkpoint's train groups."""
    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint

    root, store, ckpt_dir = planted
    m = filter_store(load_checkpoint(ckpt_dir), store, tmp_path / "f", FilterConfig(threshold="0", plots=False, random_seeds=1))
    sa = m["signal_auroc"]
    assert sa["auroc"]["value"] == 1.0 and sa["auroc"]["n_pos"] + sa["auroc"]["n_neg"] == 20  # the 4 report groups
    lc = sa["auroc"]["length_controlled"]
    assert lc["stratified"]["value"] == 1.0 and lc["residualised"]["value"] is not None
    assert sa["length_control"]["fitted_on"] == "train split" and sa["length_control"]["n_train"] == 15
    from probekit_cli.tables import filter_table

    assert "  within length strata" in filter_table(m).labels()


def test_filter_signal_auroc_on_another_store_fits_its_length_controls_on_the_training_store(planted, tmp_path):
    import shutil

    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    root, store, ckpt_dir = planted
    shutil.copytree(store.path, tmp_path / "copy")
    other = Store(tmp_path / "copy")
    ckpt = load_checkpoint(ckpt_dir)
    m = filter_store(ckpt, other, tmp_path / "f", FilterConfig(threshold="0", plots=False, random_seeds=1))
    same = filter_store(ckpt, store, tmp_path / "g", FilterConfig(threshold="0", plots=False, random_seeds=1))
    assert m["signal_auroc"]["length_control"]["fitted_on"].startswith("train split of the training store")
    assert m["signal_auroc"]["auroc"] == same["signal_auroc"]["auroc"]  # same numbers, read through the training store
    ckpt.config = {**ckpt.config, "store": {**ckpt.config["store"], "path": str(tmp_path / "gone")}}
    gone = filter_store(ckpt, other, tmp_path / "h", FilterConfig(threshold="0", plots=False, random_seeds=1))
    assert "not available" in gone["signal_auroc"]["auroc"]["length_controlled"]["note"]
    assert gone["signal_auroc"]["auroc"]["value"] == 1.0


def _record_blocks(monkeypatch):
    """Record (store path, trajectories) of every block the stream row source yields."""
    from probekit.probe.data import StreamRows

    seen = []
    real = StreamRows.blocks

    def blocks(self, trajectories):
        for b in real(self, trajectories):
            seen.append((self.store.path, b.trajectories.tolist()))
            yield b

    monkeypatch.setattr(StreamRows, "blocks", blocks)
    return seen


def test_auto_threshold_scores_only_the_validation_trajectories(planted, tmp_path, monkeypatch):
    """The threshold is chosen on the checkpoint's validation groups, so only their trajectories are read and scored
    (it scored the whole training store); the choice and the table are the filter's on the whole store."""
    from probekit.filter.filtering import auto_threshold, filter_store
    from probekit.probe.checkpoint import load_checkpoint

    root, store, ckpt_dir = planted
    ckpt = load_checkpoint(ckpt_dir)
    whole = filter_store(ckpt, store, tmp_path / "f", FilterConfig(threshold="auto", skip_first=5, plots=False, random_seeds=1))
    seen = _record_blocks(monkeypatch)
    chosen = auto_threshold(ckpt, "mean", skip_first=5)
    valid = np.flatnonzero(np.isin(store.meta.group, ckpt.split["valid"])).tolist()
    assert sorted(t for _, ts in seen for t in ts) == valid and len(valid) == 15
    assert chosen["table"] == [{"threshold": r["threshold"], "selection": r["selection"]} for r in whole["thresholds"]]
    assert chosen["threshold"] == whole["chosen_threshold"]


def test_signal_auroc_on_another_store_reads_only_the_training_split_of_the_training_store(planted, tmp_path, monkeypatch):
    import shutil

    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    root, store, ckpt_dir = planted
    shutil.copytree(store.path, tmp_path / "copy")
    ckpt = load_checkpoint(ckpt_dir)
    same = filter_store(ckpt, store, tmp_path / "g", FilterConfig(threshold="0", plots=False, random_seeds=1))
    seen = _record_blocks(monkeypatch)
    other = filter_store(ckpt, Store(tmp_path / "copy"), tmp_path / "f", FilterConfig(threshold="0", plots=False, random_seeds=1))
    train = np.flatnonzero(np.isin(store.meta.group, ckpt.split["train"])).tolist()
    assert {p for p, _ in seen} == {store.path} and sorted(t for _, ts in seen for t in ts) == train
    assert other["signal_auroc"]["auroc"] == same["signal_auroc"]["auroc"]
    assert other["signal_auroc"]["auroc"]["length_controlled"]["residualised"]["value"] is not None


# ---- the official evaluation's options and Q-Probe's weighting, end to end ----------------------------


def test_skip_frac_moves_each_drop_to_its_share_of_the_length_and_online_stopping_refuses_its_threshold(planted, tmp_path):
    """The planted wrong solutions turn at ERROR_AT = 7 and stay turned: with --skip-frac F each is dropped at
    max(7, floor(F * length)), the official max(5, int(F * len)) slice; the threshold it chose cannot stop online."""
    from probekit.filter.filtering import filter_output_threshold, filter_store
    from probekit.io import iter_jsonl
    from probekit.probe.checkpoint import load_checkpoint

    root, store, ckpt_dir = planted
    ckpt = load_checkpoint(ckpt_dir)
    lens = store.meta.completion_tokens
    for frac in (0.5, 0.95):
        out = tmp_path / f"f{frac}"
        m = filter_store(ckpt, store, out, FilterConfig(threshold="0", skip_frac=frac, plots=False, random_seeds=1))
        assert m["skip_frac"] == frac and m["report"]["accuracy_filtered"] == 1.0
        recs = [r for _, r in iter_jsonl(out / "decisions.jsonl")]
        for i, r in enumerate(recs):
            drop = max(ERROR_AT, int(lens[i] * frac))
            assert (r["kept"], r["first_drop_position"]) == ((True, -1) if r["label"] else (False, drop))
            assert r["saved_tokens"] == (0 if r["label"] else lens[i] - drop - 1)
        with pytest.raises(ProbekitError, match="--skip-frac .* online stopping cannot apply"):
            filter_output_threshold(out, ckpt, "mean", 5)
    assert {int(n * 0.5) for n in lens} - {0, 1, 2, 3, 4, 5, 6, 7}  # some drops did move past ERROR_AT


def test_vote_tests_and_softmax_weighting_in_the_report(planted, tmp_path):
    """On the 4 report groups the filtered vote is right and the plain vote wrong everywhere: McNemar 4 to 0, p = 2/16;
    every filtered share is 1 and every plain one 2/5, so the t-test has no spread to test. softmax(reward/beta) weighs the
    two right solutions (reward ~ +3) over the three wrong (~ -3) at beta 1, and tends to the plain vote at large beta."""
    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.probe.scoring import Scorer, score_store

    root, store, ckpt_dir = planted
    ckpt = load_checkpoint(ckpt_dir)
    plain = filter_store(ckpt, store, tmp_path / "a", FilterConfig(threshold="0", plots=False, random_seeds=1))
    rep = plain["report"]
    assert plain["weighting"] == {"kind": "argmax"} and not any(k.startswith("softmax") for k in rep)
    paired, tt = rep["vote_tests"]["paired"], rep["vote_tests"]["official_ttest"]
    assert (paired["only_filtered_correct"], paired["only_majority_correct"], paired["n_problems"]) == (4, 0, 4)
    assert paired["p_value"] == 2 / 16
    assert tt["mean_share_correct_filtered"] == 1.0 and tt["mean_share_correct"] == pytest.approx(0.4)
    assert tt["student"]["p_value"] is None and tt["welch"]["p_value"] is None

    reward = score_store(store, Scorer.from_checkpoint(ckpt), ckpt.layers)
    last = reward.last(reward.reward)
    rep_t = np.isin(store.meta.group, plain["groups"]["report"])
    good = store.meta.label == 1
    for beta, vote in ((1.0, 1.0), (100.0, 0.0)):
        m = filter_store(ckpt, store, tmp_path / f"s{beta}", FilterConfig(threshold="0", plots=False, random_seeds=1, weighting="softmax",
                                                                         beta=beta))
        r = m["report"]
        assert m["weighting"]["kind"] == "softmax" and m["weighting"]["beta"] == beta and m["weighting"]["score"] == "reward"
        expected = np.mean([np.exp(last[rep_t & good & (store.meta.group == g)] / beta).sum()
                            / np.exp(last[rep_t & (store.meta.group == g)] / beta).sum() for g in plain["groups"]["report"]])
        assert r["softmax_best_of_n_accuracy"] == pytest.approx(expected)
        assert r["softmax_vote_accuracy"] == vote and r["softmax_vote_filtered_accuracy"] == 1.0  # only right ones are kept
        assert {k: r[k] for k in ("best_of_n_accuracy", "weighted_vote_accuracy", "accuracy_filtered")} == \
            {k: rep[k] for k in ("best_of_n_accuracy", "weighted_vote_accuracy", "accuracy_filtered")}  # recorded keys unchanged
    assert filter_store(ckpt, store, tmp_path / "q", FilterConfig(threshold="0", plots=False, random_seeds=1, weighting="softmax", beta=0.1,
                                                                  weight_by="q"))["report"]["softmax_best_of_n_accuracy"] > 0.99


def test_cli_threshold_defaults_to_auto_and_explicit_numbers_still_work(planted, tmp_path, monkeypatch, capsys):
    """No --threshold is auto (the quantile grid, chosen on selection groups), not a fixed cosine 0.

    Through the console entry point in this process (the real process's exit status and stderr: the two tests above)."""
    from tests.helpers import run_cli

    root, store, ckpt_dir = planted
    runs, said = {}, {}
    for name, extra in (("default", ()), ("auto", ("--threshold", "auto")), ("fixed", ("--threshold", "-0.25"))):
        code, err = run_cli(monkeypatch, capsys, "filter", "--ckpt", ckpt_dir, "--store", store.path, "--out", tmp_path / name, "--no-plots",
                            "--random-seeds", "1", *extra)
        assert code == 0, err
        runs[name], said[name] = json.loads((tmp_path / name / "metrics.json").read_text()), " ".join(err.split())
    assert runs["default"]["threshold_mode"] == runs["auto"]["threshold_mode"] == "auto"
    assert runs["default"]["chosen_threshold"] == runs["auto"]["chosen_threshold"]
    assert len(runs["default"]["thresholds"]) > 1 and "selection groups" in said["default"] and "selection groups" not in said["fixed"]
    assert runs["fixed"]["threshold_mode"] == "fixed" and runs["fixed"]["chosen_threshold"] == -0.25


def test_cli_prints_the_vote_tests_and_softmax_rows_and_refuses_bad_weighting(planted, tmp_path, monkeypatch, capsys):
    from tests.helpers import assert_one_line_error, run_cli

    root, store, ckpt_dir = planted
    base = ("filter", "--ckpt", ckpt_dir, "--store", store.path, "--threshold", "0", "--no-plots", "--random-seeds", "1")
    monkeypatch.setenv("COLUMNS", "240")  # the table's rows unwrapped
    code, err = run_cli(monkeypatch, capsys, *base, "--out", tmp_path / "o", "--weighting", "softmax", "--beta", "2", "--weight-by", "q",
                        "--skip-frac", "0.3")
    assert code == 0, err
    text = " ".join(err.split())
    assert "McNemar exact p (paired, per problem) │ 0.125" in text and "4 / 4 / 0 / 0" not in text and "0 / 4 / 0 / 0" in text
    assert "probekit filter (q, skip max(5, floor(0.3 x length)))" in text  # the title states the skip rule
    assert "best-of-n by softmax(q/2) (expected)" in text and "t-test p over 4 problems (official Student / Welch) │ - / -" in text
    for bad, needle in ((("--skip-frac", "1"), "--skip-frac 1.0: must be in [0, 1)"),
                        (("--beta", "2"), "--beta and --weight-by apply only with --weighting softmax"),
                        (("--weighting", "softmax", "--beta", "0"), "--beta 0.0: must be a positive number"),
                        (("--weighting", "mean"), "--weighting")):
        assert_one_line_error(*run_cli(monkeypatch, capsys, *base, "--out", tmp_path / "bad", *bad), needle)
