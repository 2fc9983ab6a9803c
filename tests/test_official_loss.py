"""The official code's contrastive loss (K×K pairs, cosine_avg, percentile windows) and per-pair margins.

The reference is a direct transcription of `ContrastiveGoalLoss.forward` in
vaskarnathscale/goal-conditioned-rm, openrlhf/models/loss.py (commit
9daaf8d17421eb769854b49402d5a96d29873405), with its three `torch.rand` draws
passed in, so both sides see the same uniforms.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probekit.config import FitConfig
from probekit.data.schema import Pair, Trajectory, read_pair_margins, read_pairs, write_pairs
from probekit.errors import ProbekitError
from probekit.probe import data as pdata
from probekit.probe import losses
from probekit.probe.checkpoint import load_checkpoint
from probekit.probe.network import ProbeModel
from probekit.probe.train import batch_loss, prepare
from probekit.store import PAIRS, Store
from tests.helpers import assert_one_line_error, fast_config, fit, planted_arrays, run_cli
from tests.store_factory import make_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def official_forward(chosen_lh, rejected_lh, chosen_na, rejected_na, rand_sim, rand_unsim, rand_rejected,
                     beta, strategy, source_p, goal_p):
    """ContrastiveGoalLoss.forward, line for line; `source_p`, `goal_p` are its self.*_state_percentile, the rand_* its
    three torch.rand results (in the order it draws them)."""
    random_values, _ = rand_sim.sort(dim=1)
    source_state_percentile = (source_p - 1) * random_values[:, 0] + 1
    goal_state_percentile = (goal_p - 1) * random_values[:, 1] + 1
    source_state_sampled_values = ((source_state_percentile * chosen_na.unsqueeze(1)) + 1).floor().int()
    source_state_sampled_values = source_state_sampled_values.clamp(0, chosen_lh.size(1) - 1)
    source_state_sampled_values *= -1
    goal_state_sampled_values = ((goal_state_percentile * chosen_na.unsqueeze(1)) + 1).floor().int()
    goal_state_sampled_values = goal_state_sampled_values.clamp(0, chosen_lh.size(1) - 1)
    goal_state_sampled_values *= -1
    source_state_embeddings = chosen_lh[torch.arange(chosen_lh.size(0)).unsqueeze(1), source_state_sampled_values]
    goal_state_embeddings = chosen_lh[torch.arange(chosen_lh.size(0)).unsqueeze(1), goal_state_sampled_values]
    if strategy == "cosine_avg":
        goal_state_embeddings = goal_state_embeddings.mean(dim=1, keepdim=True)
    chosen_similarity = torch.cosine_similarity(source_state_embeddings.unsqueeze(2), goal_state_embeddings.unsqueeze(1), dim=3)
    chosen_sigmod = torch.sigmoid(chosen_similarity).mean()
    random_unsim_values = (source_p - 1) * rand_unsim + 1
    sampled_unsim_values = ((random_unsim_values * chosen_na.unsqueeze(1)) + 1).floor().int()
    sampled_unsim_values = sampled_unsim_values.clamp(0, chosen_lh.size(1) - 1)
    sampled_unsim_values *= -1
    sampled_unsim_embeddings = chosen_lh[torch.arange(chosen_lh.size(0)).unsqueeze(1), sampled_unsim_values]
    random_rejected_values = (goal_p - 1) * rand_rejected + 1
    sampled_unsim_rejected_values = ((random_rejected_values * rejected_na.unsqueeze(1)) + 1).floor().int()
    sampled_unsim_rejected_values = sampled_unsim_rejected_values.clamp(0, rejected_lh.size(1) - 1)
    sampled_unsim_rejected_values *= -1
    sampled_unsim_rejected_embeddings = rejected_lh[torch.arange(rejected_lh.size(0)).unsqueeze(1), sampled_unsim_rejected_values]
    if strategy == "cosine_avg":
        sampled_unsim_rejected_embeddings = sampled_unsim_rejected_embeddings.mean(dim=1, keepdim=True)
    unsimilarity = torch.cosine_similarity(sampled_unsim_embeddings.unsqueeze(2), sampled_unsim_rejected_embeddings.unsqueeze(1), dim=3)
    rejected_sigmoid = torch.sigmoid(unsimilarity).mean()
    loss = -torch.log(chosen_sigmod) - torch.log(1 - rejected_sigmoid)
    return beta * loss


class FixedDraws:
    """A stand-in for numpy's Generator whose `random(shape)` returns prepared arrays, in order."""

    def __init__(self, *arrays: np.ndarray):
        self.arrays = list(arrays)

    def random(self, shape):
        out = self.arrays.pop(0)
        assert out.shape == tuple(shape)
        return out


# Chosen completions 0, 2, 4 and rejected 1, 3, 5, of unequal lengths; prompts of 3 tokens precede them in the
# official left-padded batch [B, L, H], whose last n tokens are the completion.
LENGTHS = [9, 6, 13, 4, 7, 11]
PROMPT, HIDDEN, K = 3, 5, 4


def fixed_batch():
    gen = np.random.default_rng(7)
    states = [gen.normal(size=(T, HIDDEN)).astype(np.float32).astype(np.float64) for T in LENGTHS]  # what a float32 store holds
    B = len(LENGTHS) // 2
    draws = (gen.uniform(0.01, 0.99, size=(B, 2, K)), gen.uniform(0.01, 0.99, size=(B, K)), gen.uniform(0.01, 0.99, size=(B, K)))
    return states, draws


def official_batch(states: list[np.ndarray], side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [B, L, H] left-padded, with PROMPT prompt states before each completion; n [B]) of one side."""
    mine = states[side::2]
    L = PROMPT + max(len(x) for x in mine)
    out = torch.zeros(len(mine), L, mine[0].shape[-1], dtype=torch.float64)
    for b, x in enumerate(mine):
        out[b, L - len(x) - PROMPT:L - len(x)] = 100.0  # prompt states: never sampled for f < 1
        out[b, L - len(x):] = torch.from_numpy(x)
    return out, torch.tensor([float(len(x)) for x in mine], dtype=torch.float64)


@pytest.mark.parametrize("strategy", ["cosine", "cosine_avg"])
@pytest.mark.parametrize("windows", [(0.0, 0.0), (0.3, 0.6), (0.5, 0.0)])
def test_kxk_is_the_official_loss_on_fixed_tensors(tmp_path, strategy, windows):
    """Same uniforms in, same loss out: the sampler (its draw order, sorting, windows, from-end positions) and the K×K
    cosines with batch means are the official code's."""
    states, draws = fixed_batch()
    store = Store(make_store(tmp_path / "s", [x.astype(np.float32) for x in states], ["a", "a", "b", "b", "c", "c"], [1, 0] * 3))
    m = store.meta
    index = pdata.build_sampling_index(m.row_start, m.row_end, store.positions(), m.completion_tokens)
    pairs = store.pairs()
    (src, goal), (neg_c, neg_r) = pdata.sample_official(index, pairs[:, 0], pairs[:, 1], K, FixedDraws(*draws), *windows)
    rows = pdata.MemoryRows(store, 2)
    z = [torch.from_numpy(rows.rows(r.ravel())).double().view(len(pairs), K, HIDDEN) for r in (src, goal, neg_c, neg_r)]
    pos = losses.pair_cosines(z[0], z[1], "kxk", strategy)
    neg = losses.pair_cosines(z[2], z[3], "kxk", strategy)
    ours = 0.5 * losses.contrastive(pos, neg, "batch")
    (c_lh, c_na), (r_lh, r_na) = official_batch(states, 0), official_batch(states, 1)
    theirs = official_forward(c_lh, r_lh, c_na, r_na, *(torch.from_numpy(d) for d in draws), 0.5, strategy, *windows)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-9, abs=1e-12)
    assert pos.shape == ((3, K, K) if strategy == "cosine" else (3, K, 1))


K_UNSIM = 3  # the official --unsim_samples, here unlike --sim_samples (K)


@pytest.mark.parametrize("strategy", ["cosine", "cosine_avg"])
def test_kxk_per_example_is_the_official_loss_at_micro_batch_1(tmp_path, strategy):
    """`--contrastive-reduce example` with --sim-samples K and --unsim-samples K_UNSIM, through `batch_loss`: the
    Bradley-Terry mean plus λ times the mean over pairs of the official loss run on each pair alone (micro-batch 1, as
    the released scripts train, their gradients accumulated over the batch), on the probe's φ of the same rows."""
    states, _ = fixed_batch()
    gen = np.random.default_rng(11)
    B = len(LENGTHS) // 2
    draws = (gen.uniform(0.01, 0.99, size=(B, 2, K)), gen.uniform(0.01, 0.99, size=(B, K_UNSIM)), gen.uniform(0.01, 0.99, size=(B, K_UNSIM)))
    store = Store(make_store(tmp_path / "s", [x.astype(np.float32) for x in states], ["a", "a", "b", "b", "c", "c"], [1, 0] * 3))
    cfg = fast_config(lam=0.5, contrastive_pairs="kxk", goal_agg=strategy, contrastive_reduce="example", sim_samples=K,
                      unsim_samples=K_UNSIM, goal_window=0.4, valid_frac=0.0, test_frac=0.0)
    data = prepare(store, cfg)
    torch.manual_seed(0)
    model = ProbeModel(store.hidden_size, "mlp", (8,), 6, "linear", 8)
    model.set_normalization(np.zeros(store.hidden_size, np.float32), np.ones(store.hidden_size, np.float32))
    pairs = store.pairs()
    with torch.no_grad():
        loss, parts = batch_loss(model, data, pairs, cfg, FixedDraws(*draws))
        phi = [model.encode(torch.from_numpy(x.astype(np.float32))).double().numpy() for x in states]  # φ of every token
        r = model(torch.from_numpy(np.stack([x[-1] for x in states]).astype(np.float32)))[1].double()
    per_example = []
    for b in range(B):
        (c_lh, c_na), (r_lh, r_na) = official_batch(phi[2 * b:2 * b + 2], 0), official_batch(phi[2 * b:2 * b + 2], 1)
        one = (torch.from_numpy(d[b:b + 1]) for d in draws)
        per_example.append(official_forward(c_lh, r_lh, c_na, r_na, *one, 0.5, strategy, 0.0, 0.4).item())
    bt = -F.logsigmoid(r[0::2] - r[1::2]).mean().item()
    assert parts["contrastive"] * 0.5 == pytest.approx(np.mean(per_example), rel=1e-5)
    assert loss.item() == pytest.approx(bt + np.mean(per_example), rel=1e-5)
    (c_lh, c_na), (r_lh, r_na) = official_batch(phi, 0), official_batch(phi, 1)
    whole = official_forward(c_lh, r_lh, c_na, r_na, *(torch.from_numpy(d) for d in draws), 0.5, strategy, 0.0, 0.4).item()
    assert not math.isclose(whole, np.mean(per_example), rel_tol=1e-3)  # micro-batch B is another loss
    with torch.no_grad():
        _, batch_parts = batch_loss(model, data, pairs, cfg.vary(contrastive_reduce="batch"), FixedDraws(*draws))
    assert batch_parts["contrastive"] * 0.5 == pytest.approx(whole, rel=1e-5)


def test_sample_counts_and_reduction_default_to_k_and_the_pair_mode():
    loss = FitConfig().vary(K=5).loss
    assert (loss.k_sim, loss.k_unsim, loss.reduce) == (5, 5, "example")
    loss = FitConfig().vary(K=5, sim_samples=16, contrastive_pairs="kxk").loss
    assert (loss.k_sim, loss.k_unsim, loss.reduce) == (16, 5, "batch")
    assert FitConfig().vary(contrastive_pairs="kxk", contrastive_reduce="example").loss.reduce == "example"


def test_paired_is_todays_loss_and_kxk_differs():
    """paired + cosine is the diagonal of the K×K matrix with a −log per pair; kxk averages every entry over the batch."""
    gen = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(3, 4, 6, generator=gen) for _ in range(4))
    pos, neg = losses.pair_cosines(a, b), losses.pair_cosines(c, d)
    assert torch.equal(pos, F.cosine_similarity(a, b, dim=-1))
    full = losses.pair_cosines(a, b, "kxk")
    assert torch.allclose(torch.diagonal(full, dim1=1, dim2=2), pos, atol=1e-6)
    per_pair = -torch.log(torch.sigmoid(pos).mean(1)) - torch.log(1 - torch.sigmoid(neg).mean(1))
    assert losses.contrastive(pos, neg).item() == pytest.approx(per_pair.mean().item(), rel=1e-6)
    kxk = losses.contrastive(full, losses.pair_cosines(c, d, "kxk"), "batch")
    p, n = torch.sigmoid(full).mean(), torch.sigmoid(losses.pair_cosines(c, d, "kxk")).mean()
    assert kxk.item() == pytest.approx((-torch.log(p) - torch.log(1 - n)).item(), rel=1e-6)
    avg = losses.pair_cosines(a, b, "paired", "cosine_avg")
    assert torch.allclose(avg, F.cosine_similarity(a, b.mean(1, keepdim=True), dim=-1))


def test_official_positions_follow_the_percentile_convention():
    """f in (P, 1] counted from the end: P = 0 covers the completion, P = 0.5 its first half; sources precede goals."""
    T = np.array([10, 10])
    u = np.array([[0.0, 0.25, 0.5, 0.999], [0.1, 0.2, 0.3, 0.4]])
    assert pdata.official_positions(u, T, 0.0).tolist() == [[0, 2, 4, 9], [0, 1, 2, 3]]  # T-1-floor((1-u)·T), f = 1 clamped
    assert pdata.official_positions(u, T, 0.5).max() <= 10 - 1 - 5
    index = pdata.SamplingIndex(np.array([0]), np.array([30]), np.array([1]), np.array([0]), np.array([30]), np.arange(30))
    (src, goal), _ = pdata.sample_official(index, np.zeros(200, np.int64), np.zeros(200, np.int64), 3, np.random.default_rng(0))
    assert (src <= goal).all() and (src < goal).any()


def test_a_sampled_position_maps_to_the_last_stored_row_at_or_before_it():
    """Strided stores: positions 0, 2, 4, 6 of a 7-token completion (rows 5..8), and a fully stored one (rows 0..4)."""
    positions = np.array([0, 1, 2, 3, 4, 0, 2, 4, 6])
    index = pdata.SamplingIndex(np.array([0, 5]), np.array([5, 9]), np.array([1, 1]), np.array([0, 0]), np.array([5, 7]), positions)
    got = pdata.rows_at_or_before(index, np.array([1, 1, 0]), np.array([[0, 1, 5], [6, 3, 2], [4, 0, 3]]))
    assert got.tolist() == [[5, 5, 7], [8, 6, 6], [4, 0, 3]]


# ---- configuration -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes,needle", [
    (dict(contrastive_pairs="kk"), "--contrastive-pairs 'kk': choose from paired, kxk"),
    (dict(goal_agg="avg"), "--goal-agg 'avg': choose from cosine, cosine_avg"),
    (dict(goal_window=1.5), "--goal-window 1.5: must be in [0, 1]"),
    (dict(contrastive_pairs="kxk", goal_min_frac=0.5), "--goal-min-frac and --late-frac are probekit's sampler"),
    (dict(source_window=0.2, late_frac=0.5), "--goal-min-frac and --late-frac are probekit's sampler"),
    (dict(contrastive="infonce", goal_agg="cosine_avg"), "--contrastive infonce: takes neither"),
    (dict(contrastive_reduce="micro"), "--contrastive-reduce 'micro': choose from example, batch"),
    (dict(unsim_samples=0), "--unsim-samples 0: must be between 1 and 1024"),
    (dict(sim_samples=1_000_000), "--sim-samples 1000000: must be between 1 and 1024"),  # a typo, not a 25 GB allocation
    (dict(K=0), "--k 0: must be between 1 and 1024"),
    (dict(contrastive="infonce", contrastive_reduce="batch"), "--contrastive infonce: takes no --contrastive-reduce"),
])
def test_bad_loss_options_are_refused(changes, needle):
    with pytest.raises(ProbekitError, match="^" + re.escape(needle)):
        FitConfig().vary(**changes).validate()


def test_cli_refuses_a_bad_pair_mode_in_one_line(tmp_path, monkeypatch, capsys):
    store = make_store(tmp_path / "s", *planted_arrays(n_groups=6)[:3])
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store, "--out", tmp_path / "c", "--contrastive-pairs", "kxk",
                        "--goal-min-frac", "0.3")
    assert_one_line_error(code, err, "--goal-min-frac and --late-frac are probekit's sampler")
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", store, "--out", tmp_path / "c", "--goal-agg", "mean")
    assert_one_line_error(code, err, "--goal-agg 'mean'")


def test_kxk_fit_records_its_config_and_learns(tmp_path):
    store = make_store(tmp_path / "s", *planted_arrays(n_groups=30)[:3])
    ckpt = fit(store, tmp_path / "c", contrastive_pairs="kxk", goal_agg="cosine_avg", source_window=0.0, goal_window=0.5,
               sim_samples=6, unsim_samples=3, contrastive_reduce="example")
    loss = load_checkpoint(ckpt.path).config["fit"]["loss"]
    assert (loss["contrastive_pairs"], loss["goal_agg"], loss["goal_window"]) == ("kxk", "cosine_avg", 0.5)
    assert (loss["sim_samples"], loss["unsim_samples"], loss["contrastive_reduce"]) == (6, 3, "example")
    assert ckpt.metrics["valid"]["probe"]["pairwise_accuracy"]["value"] > 0.8


# ---- per-pair margins --------------------------------------------------------------------------------------------
def test_pair_margins_are_read_checked_and_written(tmp_path):
    trajs = [Trajectory(f"t{i}", "g", "p", "c") for i in range(3)]
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"chosen": "t0", "rejected": "t1", "margin": 1.5}\n{"chosen": "t0", "rejected": "t2"}\n')
    pairs = read_pairs(path, trajs)
    assert [p.margin for p in pairs] == [1.5, None]
    assert read_pair_margins(path).tolist() == [1.5, 0.0]  # absent = 0, as in the official reader
    write_pairs(tmp_path / "back.jsonl", pairs)
    assert [json.loads(line) for line in (tmp_path / "back.jsonl").read_text().splitlines()] == [
        {"chosen": "t0", "rejected": "t1", "margin": 1.5}, {"chosen": "t0", "rejected": "t2"}]
    write_pairs(tmp_path / "none.jsonl", [Pair("t0", "t1")])
    assert read_pair_margins(tmp_path / "none.jsonl") is None and read_pair_margins(tmp_path / "absent.jsonl") is None
    for bad in ('"1"', "true", "NaN"):
        path.write_text('{"chosen": "t0", "rejected": "t1", "margin": %s}\n' % bad)
        with pytest.raises(ProbekitError, match=r"pairs.jsonl:1: field 'margin' must be a finite number"):
            read_pairs(path, trajs)


def test_each_pairs_margin_enters_its_bradley_terry_term(tmp_path):
    states, groups, labels, _ = planted_arrays(n_groups=8)
    n_pairs = sum(1 for i in range(len(groups)) for j in range(len(groups)) if groups[i] == groups[j] and labels[i] == 1 and labels[j] == 0)
    margins = [0.25 * k for k in range(n_pairs)]
    store = Store(make_store(tmp_path / "s", states, groups, labels, margins=margins))
    cfg = fast_config(lam=0.0, margin=0.5)
    data = prepare(store, cfg)
    all_pairs = store.pairs()
    expect = np.asarray(margins)[[int(np.flatnonzero((all_pairs == p).all(1))[0]) for p in data.train_pairs]]
    assert np.allclose(data.train_margins, expect)
    assert prepare(store, cfg.vary(pair_margins=False)).train_margins is None
    model = ProbeModel(store.hidden_size, "mlp", (8,), 4, "linear", 8)
    model.set_normalization(np.zeros(store.hidden_size, np.float32), np.ones(store.hidden_size, np.float32))
    loss, _ = batch_loss(model, data, data.train_pairs, cfg, np.random.default_rng(0), data.train_margins)
    with torch.no_grad():
        x = torch.from_numpy(data.source.rows(data.index.row_end[data.train_pairs.ravel()] - 1))
        r = model(x)[1].view(-1, 2)
    want = -F.logsigmoid(r[:, 0] - r[:, 1] - 0.5 - torch.from_numpy(expect).float()).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert not math.isclose(loss.item(), losses.bradley_terry(r[:, 0], r[:, 1], 0.5).item(), rel_tol=1e-3)


def test_extract_keeps_the_pairs_margins_in_the_store(tmp_path, tiny_model_dir):
    from probekit.data.schema import write_trajectories
    from probekit.extract.run import extract
    from probekit.models import load_model
    from tests.helpers import extract_options

    trajs = [Trajectory(f"t{i}", "g", "Q: 1+1?", f"A: {i}", label=int(i == 0)) for i in range(3)]
    write_trajectories(tmp_path / "t.jsonl", trajs)
    write_pairs(tmp_path / "p.jsonl", [Pair("t0", "t1", 2.0), Pair("t0", "t2")])
    extract(extract_options(tmp_path / "t.jsonl", tmp_path / "store", pairs=tmp_path / "p.jsonl"), loaded=load_model(str(tiny_model_dir)))
    assert read_pair_margins(tmp_path / "store" / PAIRS).tolist() == [2.0, 0.0]
