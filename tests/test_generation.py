"""`probekit generate` on the tiny random model: the states it keeps are extract's, its samples are reproducible,
and online early stopping decides exactly what `probekit filter` decides after the fact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probekit.data.prompts import Prompt
from probekit.errors import ProbekitError
from probekit.generate.config import GenerateConfig
from probekit.generate.generation import generate
from probekit.generate.stopping import OnlineStop
from probekit.models import load_model
from probekit.store import Store

# Tiny models: one intra-op thread is faster and steadier on a shared 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [Prompt(f"p{i}", f"Question {i}: how many apples are left after {i + 2} are eaten?", str(i)) for i in range(5)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


def config(**kw) -> GenerateConfig:
    base = dict(model="tiny", samples=3, max_new_tokens=12, temperature=1.0, top_p=0.95, seed=0, template="raw", layers="2,4",
                answer="last-number", batch_size=6, shard_size=4)
    return GenerateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def unfiltered(tiny, tmp_path_factory):
    return generate(PROMPTS, tmp_path_factory.mktemp("gen") / "out", config(), loaded=tiny)


def test_outputs_are_a_store_and_trajectories_in_probekits_formats(unfiltered, tiny):
    from probekit.data.schema import read_pairs, read_trajectories
    from probekit.extract.render import prompt_ids

    out = unfiltered.out
    trajs, skipped = read_trajectories(out / "trajectories.jsonl")
    assert skipped == 0 and len(trajs) == 15
    assert [t.group for t in trajs] == [p.id for p in PROMPTS for _ in range(3)]
    read_pairs(out / "pairs.jsonl", trajs)
    store = Store(out / "store")
    assert store.layers == [2, 4] and len(store) == 15 and len(store.shard_paths) == 4
    assert store.manifest["key"]["model_dtype"] == store.manifest["model"]["dtype"] == "float32"  # the compute dtype is keyed
    assert list(store.meta.id) == [t.id for t in trajs]
    assert (store.meta.completion_tokens == [t.meta["tokens"] for t in trajs]).all()
    assert (store.meta.completion_tokens >= 1).all() and (store.meta.completion_tokens <= 12).all()
    stats = json.loads((out / "generation.json").read_text())
    assert stats["tokens_generated"] == int(store.meta.completion_tokens.sum())
    assert stats["n_hit_max_new_tokens"] == int((store.meta.completion_tokens == 12).sum())
    # A prompt's samples share one prefill (batch 6 holds a prompt's 3 samples); the time splits into admitting and decoding.
    assert stats["prefill_tokens"] == sum(len(prompt_ids(tiny.tokenizer, p.prompt, "raw")) for p in PROMPTS)
    assert 0 < stats["seconds_admitting"] and 0 < stats["seconds_decoding"]
    assert stats["seconds_admitting"] + stats["seconds_decoding"] <= stats["seconds"] + 1e-3  # each rounded to the millisecond


def test_stored_states_equal_what_extract_computes_on_the_generated_text(unfiltered, tiny, tmp_path):
    """Same model, layers and template: extract's states of the generated text match the captured ones (fp16 storage)."""
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract

    gen = Store(unfiltered.out / "store")
    extract(ExtractOptions(trajectories=unfiltered.out / "trajectories.jsonl", out=tmp_path / "ex", layers="2,4", template="raw"), loaded=tiny)
    ex = Store(tmp_path / "ex")
    np.testing.assert_array_equal(ex.meta.completion_tokens, gen.meta.completion_tokens)
    np.testing.assert_array_equal(ex.positions(), gen.positions())
    for layer in (2, 4):  # a KV-cached decode step vs one full forward: equal up to float16 storage
        np.testing.assert_allclose(gen.load_layer(layer), ex.load_layer(layer), rtol=1e-2, atol=1e-2)
    # the recorded ids are what makes this hold: re-encoding the decoded random tokens mostly gives other tokens
    tok = tiny.tokenizer
    same = sum(tok(t.completion, add_special_tokens=False)["input_ids"] == t.meta["completion_token_ids"] for t in unfiltered.trajectories)
    assert same < len(unfiltered.trajectories)


def test_samples_do_not_depend_on_batching(unfiltered, tiny, tmp_path):
    again = generate(PROMPTS, tmp_path / "b1", config(batch_size=1), loaded=tiny)
    assert [t.completion for t in again.trajectories] == [t.completion for t in unfiltered.trajectories]
    other = generate(PROMPTS, tmp_path / "s1", config(seed=1), loaded=tiny)
    assert [t.completion for t in other.trajectories] != [t.completion for t in unfiltered.trajectories]


def test_a_tiny_positive_temperature_samples_what_greedy_decoding_does(tiny, probe, tmp_path):
    """logits / 1e-40 overflows float32: each token must be the greedy one (not garbage from inf - inf), in both decoders.

    Two prompts (3 samples and 2 x 2 beams each, 12 tokens) are enough: garbage from inf - inf shows at the first token."""
    from probekit.generate.config import SteerConfig
    from probekit.generate.steering import steer

    prompts = PROMPTS[:2]
    greedy = generate(prompts, tmp_path / "g0", config(temperature=0.0), loaded=tiny)
    search = SteerConfig(beams=2, candidates=2, step_tokens=3)
    steered = steer(prompts, tmp_path / "s0", config(temperature=0.0), search, probe, loaded=tiny)
    for k, temperature in enumerate((1e-40, 1e-300, 5e-324)):
        tiny_t = generate(prompts, tmp_path / f"g{k + 1}", config(temperature=temperature), loaded=tiny)
        assert [t.completion for t in tiny_t.trajectories] == [t.completion for t in greedy.trajectories], temperature
        tiny_s = steer(prompts, tmp_path / f"s{k + 1}", config(temperature=temperature), search, probe, loaded=tiny)
        assert [t.completion for t in tiny_s.trajectories] == [t.completion for t in steered.trajectories], temperature


@pytest.fixture(scope="module")
def probe(unfiltered, tmp_path_factory):
    """A random probe over layer 4 of the tiny model, saved as a checkpoint of the generated store."""
    from tests.helpers import random_probe

    return random_probe(unfiltered.out / "store", 4, tmp_path_factory.mktemp("ck") / "ck")


def test_online_stopping_decides_what_the_filter_decides_after_the_fact(unfiltered, probe, tiny, tmp_path):
    from tests.helpers import assert_online_stopping_decides_what_the_filter_decides

    assert_online_stopping_decides_what_the_filter_decides(unfiltered, probe, PROMPTS, config(), tiny, tmp_path / "on")


def test_bad_inputs_are_one_line_errors(tiny, tmp_path, probe):
    from probekit.data.prompts import read_prompts

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "a", "prompt": "   "}\n')
    with pytest.raises(ProbekitError, match=r"prompts.jsonl:1: field 'prompt'"):
        read_prompts(bad)
    with pytest.raises(ProbekitError, match="exceed the model's context of 512"):
        generate([Prompt("long", "word " * 600)], tmp_path / "o", config(), loaded=tiny)
    with pytest.raises(ProbekitError, match="top-p"):
        generate(PROMPTS, tmp_path / "o2", config(top_p=0.0), loaded=tiny)
    with pytest.raises(ProbekitError, match=r"\[-1, 1\]"):
        OnlineStop(probe, 3.0)


def test_steering_raises_q_toward_the_goal_over_plain_sampling(unfiltered, probe, tiny, tmp_path):
    from probekit.probe.scoring import Scorer, score_store
    from probekit.generate.config import SteerConfig
    from probekit.generate.steering import steer

    plain = score_store(Store(unfiltered.out / "store"), Scorer.from_checkpoint(probe), 4)
    plain_final_q = plain.last(plain.q["mean"])
    cfg = SteerConfig(beams=2, candidates=4, step_tokens=3)
    a = steer(PROMPTS, tmp_path / "a", config(), cfg, probe, loaded=tiny)
    b = steer(PROMPTS, tmp_path / "b", config(), cfg, probe, loaded=tiny, overwrite=True)
    assert [t.completion for t in a.trajectories] == [t.completion for t in b.trajectories]  # reproducible per seed
    best = [t for t in a.trajectories if t.meta["rank"] == 0]
    assert [t.group for t in best] == [p.id for p in PROMPTS]
    steered_q = np.array([t.meta["q"] for t in best])
    assert steered_q.mean() > plain_final_q.mean() + 0.1, (steered_q.mean(), plain_final_q.mean())
    # the reported Q is the scorer's Q of the beam's last token, as extract + score would compute it
    assert a.stats["tokens_generated"] > int(Store(unfiltered.out / "store").meta.completion_tokens.sum())


def test_goal_from_examples_is_the_mean_phi_of_their_final_states(unfiltered, probe, tiny, tmp_path):
    from probekit.generate.custom_goals import goal_from_examples
    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract

    examples = tmp_path / "examples.jsonl"
    write_trajectories(examples, unfiltered.trajectories[:4])
    proto, info = goal_from_examples(probe, examples, tiny, template="raw")
    extract(ExtractOptions(trajectories=examples, out=tmp_path / "ex", layers="4", template="raw", positions="last", dtype="float32"), loaded=tiny)
    with torch.no_grad():
        z = probe.model.encode(torch.from_numpy(Store(tmp_path / "ex").load_layer(4))).numpy()
    np.testing.assert_allclose(proto, z.mean(axis=0, keepdims=True), rtol=1e-5, atol=1e-6)
    assert info["n_examples"] == 4 and proto.shape == (1, 8)
    empty = tmp_path / "none.jsonl"
    empty.write_text("\n")
    with pytest.raises(ProbekitError, match="no valid trajectories"):
        goal_from_examples(probe, empty, tiny)


def test_given_completion_ids_are_checked(tiny):
    from probekit.data.schema import Trajectory
    from probekit.extract.render import encode

    ok = Trajectory("a", "g", "prompt", "text", meta={"completion_token_ids": [5, 6, 7]})
    assert encode(ok, tiny.tokenizer, "raw", 64).completion_tokens == 3
    for bad in ([5, "6"], [10**9], [True], "5 6"):
        with pytest.raises(ProbekitError, match="completion_token_ids"):
            encode(Trajectory("b", "g", "prompt", "text", meta={"completion_token_ids": bad}), tiny.tokenizer, "raw", 64)


def test_stop_string_ends_a_sample_where_it_first_appears(unfiltered, tiny, tmp_path):
    from collections import Counter

    chars = Counter(ch for t in unfiltered.trajectories for ch in t.completion if ch.strip())
    stop = chars.most_common(1)[0][0]  # a character the random model does produce
    stopped = generate(PROMPTS, tmp_path / "st", config(stop=stop), loaded=tiny)
    ended = 0
    for full, cut in zip(unfiltered.trajectories, stopped.trajectories):
        ids_full, ids_cut = full.meta["completion_token_ids"], cut.meta["completion_token_ids"]
        assert ids_full[:len(ids_cut)] == ids_cut  # same sample, cut short
        if stop in cut.completion:
            ended += 1
            assert stop not in tiny.tokenizer.decode(ids_cut[:-1], skip_special_tokens=True)  # cut at its first appearance
        else:
            assert ids_cut == ids_full
    assert ended >= 3
    assert Store(tmp_path / "st" / "store").meta.completion_tokens.sum() < Store(unfiltered.out / "store").meta.completion_tokens.sum()


def test_generate_steer_and_goal_refuse_an_out_that_holds_their_inputs_or_other_files(tiny, tmp_path, probe):
    from probekit.generate.config import SteerConfig
    from probekit.generate.steering import steer

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "prompts.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ProbekitError, match="holds the input"):
        generate(PROMPTS, folder, config(), loaded=tiny, inputs=(folder / "prompts.jsonl",))
    with pytest.raises(ProbekitError, match="not empty"):
        steer(PROMPTS, folder, config(), SteerConfig(), probe, loaded=tiny)
    with pytest.raises(ProbekitError, match="holds the input"):
        steer(PROMPTS, probe.path, config(), SteerConfig(), probe, loaded=tiny, overwrite=True, inputs=(probe.path,))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "prompts.jsonl"]


def test_generate_threshold_auto_without_validation_groups_is_a_one_line_error(tiny_model_dir, probe, tmp_path, monkeypatch, capsys):
    """auto is --threshold's default: `--filter CK` alone chooses on CK's validation groups, and says so when it has none."""
    from tests.helpers import assert_one_line_error, run_cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Question: 2 + 2?", "gold": "4"}\n')
    for extra in (["--threshold", "auto"], []):
        code, err = run_cli(monkeypatch, capsys, "generate", prompts, "--out", tmp_path / "o", "--model", tiny_model_dir,
                            "--filter", probe.path, "--no-progress", *extra)
        assert_one_line_error(code, err, "--threshold auto: checkpoint")
        assert "no validation groups" in err
        assert not (tmp_path / "o").exists()


def test_steer_toward_a_goal_built_from_examples_through_the_cli(unfiltered, probe, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`probekit goal --from` then `probekit steer --goal-from DIR --goal NAME`: the beams' Q toward that goal beats plain sampling's."""
    from probekit.generate.custom_goals import read_goal
    from probekit.data.schema import write_trajectories
    from probekit.probe.scoring import Scorer, score_store
    from tests.helpers import run_cli

    examples = tmp_path / "examples.jsonl"
    write_trajectories(examples, unfiltered.trajectories[-3:])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt}) + "\n" for p in PROMPTS))
    code, err = run_cli(monkeypatch, capsys, "goal", "--ckpt", probe.path, "--from", examples, "--name", "mine", "--out", tmp_path / "goal",
                        "--model", tiny_model_dir, "--template", "raw")
    assert code == 0, err
    common = ["--model", tiny_model_dir, "--template", "raw", "--max-new-tokens", "12", "--temperature", "1.0",
              "--answer", "last-number", "--no-progress"]
    code, err = run_cli(monkeypatch, capsys, "steer", prompts, "--ckpt", probe.path, "--out", tmp_path / "s", "--goal-from", tmp_path / "goal",
                        "--goal", "mine", "--beams", "2", "--candidates", "4", "--step-tokens", "3", *common)
    assert code == 0, err
    steered = [json.loads(line) for line in (tmp_path / "s" / "trajectories.jsonl").read_text().splitlines()]
    steered_q = np.array([t["meta"]["q"] for t in steered if t["meta"]["rank"] == 0])
    plain = score_store(Store(unfiltered.out / "store"), Scorer(probe.model, {**probe.goals, **read_goal(tmp_path / "goal", probe)}, kinds=["mine"]), 4)
    assert steered_q.mean() > np.nanmean(plain.last(plain.q["mine"])) + 0.05
    code, err = run_cli(monkeypatch, capsys, "steer", prompts, "--ckpt", probe.path, "--out", tmp_path / "s2", "--goal", "nothing", *common)
    assert code == 2 and "unknown goal 'nothing'" in err and "Traceback" not in err


def test_goal_reports_the_goal_it_built_beside_the_checkpoints_goals(unfiltered, probe, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`probekit goal` says how many examples made the goal, its norm beside the checkpoint's mean goal's, and its cosine to
    each checkpoint goal: in its table (with a legend) and with --json, the numbers of the files it wrote."""
    import sys

    from probekit.generate.custom_goals import read_goal
    from probekit.data.schema import write_trajectories
    from probekit_cli.main import main
    from tests.helpers import run_cli

    examples = tmp_path / "examples.jsonl"
    write_trajectories(examples, unfiltered.trajectories[:4])
    base = ["goal", "--ckpt", probe.path, "--from", examples, "--name", "mine", "--model", tiny_model_dir, "--template", "raw"]
    monkeypatch.setattr(sys, "argv", ["probekit", *map(str, [*base, "--out", tmp_path / "g", "--json"])])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    described = json.loads(out)
    built, mean = read_goal(tmp_path / "g", probe)["mine"][0], probe.goals["mean"][0]
    assert described["n_examples"] == 4 and described["name"] == "mine"
    assert described["norm"] == pytest.approx(float(np.linalg.norm(built)), rel=1e-5)
    assert described["checkpoint_mean_goal_norm"] == pytest.approx(float(np.linalg.norm(mean)), rel=1e-5)
    cosine = float(built @ mean / np.linalg.norm(built) / np.linalg.norm(mean))
    assert described["cosine_to_checkpoint_goals"]["mean"] == pytest.approx(cosine, abs=1e-5)
    assert set(described["cosine_to_checkpoint_goals"]) == set(probe.goals)
    monkeypatch.setenv("COLUMNS", "200")
    code, err = run_cli(monkeypatch, capsys, *base, "--out", tmp_path / "g2")
    assert code == 0, err
    text = " ".join(err.split())
    assert f"cosine to mean goal │ {cosine:.3f}" in text and "n_examples │ 4" in text
    assert "norm: L2 norm of the goal in φ space" in text  # the legend says what the numbers are


def test_states_stream_to_shards_so_memory_is_bounded_by_a_few_batches_and_a_shard(tiny, tmp_path, monkeypatch):
    """Whatever the number of prompts, at most 3 batches plus a group of samples are held, and less than a shard after each write.

    Seed 3 with a blank as the stop string makes a few early samples run long while later prompts finish fast: without the
    reorder buffer's bound, 24 samples would be held at once here."""
    from probekit.generate import decoding, generation

    written, held, prefilled = [], [], []
    add, prefill = generation.StoreWriter.add, decoding.Rows._prefill

    def spy(self, seqs, trajectories):
        add(self, seqs, trajectories)
        written.extend(t.id for t in trajectories)
        held.append(len(self.pending))

    def spy_prefill(self, seqs):
        prefilled.extend({s.prompt_index for s in seqs})
        return prefill(self, seqs)

    monkeypatch.setattr(generation.StoreWriter, "add", spy)
    monkeypatch.setattr(decoding.Rows, "_prefill", spy_prefill)
    many = [Prompt(f"q{i}", f"Question {i}: what is {i} + 1?", str(i + 1)) for i in range(24)]
    cfg = config(samples=2, batch_size=4, shard_size=3, max_new_tokens=60, seed=3, stop=" ", layers="4")
    res = generate(many, tmp_path / "o", cfg, loaded=tiny)
    assert written == [f"q{i}-{k}" for i in range(24) for k in range(2)]  # one prompt at a time, in order
    assert sorted(prefilled) == list(range(24))  # a prompt's samples are admitted together: each prompt is prefilled once
    assert max(held) < 3  # what is left after each write is less than a shard
    assert res.stats["peak_samples_held"] <= 3 * 4 + 2 - 1
    assert len(Store(res.out / "store").shard_paths) == 16  # 48 samples in shards of 3, written as they filled


def test_merged_kv_rows_give_the_logits_of_each_sequence_decoded_alone(tiny):
    """Continuous batching's cache surgery: setting a row aside, merging it back with new rows, and dropping rows change no logits."""
    from transformers import DynamicCache

    from probekit.extract.forward import position_ids_from_mask
    from probekit.generate.kv_rows import copy_rows, keep_rows, merge_rows

    model = tiny.model
    seqs = [[5, 9, 17, 33, 2, 41, 7, 8, 90], [12, 13], [60, 61, 62, 63, 64]]

    def alone(ids):  # one full forward, no padding, no cache
        return model(input_ids=torch.tensor([ids])).logits[0, -1]

    def prefill(batch):
        width = max(map(len, batch))
        ids = torch.tensor([[0] * (width - len(s)) + s for s in batch])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch])
        cache = DynamicCache()
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), cache=cache, use_cache=True)
        return cache, mask

    def step(cache, mask, tokens, pos):
        mask = torch.cat([mask, torch.ones((len(tokens), 1), dtype=mask.dtype)], dim=1)
        out = model(input_ids=torch.tensor(tokens)[:, None], attention_mask=mask, position_ids=torch.tensor(pos)[:, None], cache=cache,
                    use_cache=True)
        return out.logits[:, -1], mask

    with torch.inference_mode():
        running, mask = prefill([seqs[0][:-1], seqs[1][:-1]])  # a running batch of two rows of different lengths
        _, mask = step(running, mask, [seqs[0][-1], seqs[1][-1]], [len(seqs[0]) - 1, len(seqs[1]) - 1])
        aside, aside_mask = copy_rows(running, mask, torch.tensor([0]))  # the long row is set aside...
        mask = keep_rows(running, mask, torch.tensor([1]))
        assert mask.shape[1] == len(seqs[1]) == running.layers[0].keys.shape[2] and aside_mask.shape[1] == len(seqs[0])
        new, new_mask = prefill([seqs[2]])
        mask = merge_rows(running, mask, [(new, new_mask), (aside, aside_mask)])  # ...and comes back with a new row, in one merge
        assert mask.shape[1] == len(seqs[0]) and running.layers[0].keys.shape[:3] == (3, 2, len(seqs[0]))
        order, nxt = [1, 2, 0], [4, 5, 3]
        logits, mask = step(running, mask, nxt, [len(seqs[i]) for i in order])
        for row, i in enumerate(order):
            torch.testing.assert_close(logits[row], alone(seqs[i] + [nxt[row]]), atol=1e-5, rtol=1e-5)
        mask = keep_rows(running, mask, torch.tensor([0, 1]))  # the longest row leaves: the columns only it used are dropped
        assert mask.shape[1] == len(seqs[2]) + 1 and running.layers[0].keys.shape[2] == mask.shape[1]
        logits, mask = step(running, mask, [6, 7], [len(seqs[1]) + 1, len(seqs[2]) + 1])
        for row, i in enumerate(order[:2]):
            torch.testing.assert_close(logits[row], alone(seqs[i] + [nxt[row], 6 + row]), atol=1e-5, rtol=1e-5)


def test_tokens_decisions_and_states_do_not_depend_on_batch_size(unfiltered, probe, tiny, tmp_path):
    """Batch sizes 1, 3 and 8 with online stopping (and fallback groups resumed): the same samples, stops and states."""
    from probekit.probe.scoring import Scorer, score_store

    scores = score_store(Store(unfiltered.out / "store"), Scorer.from_checkpoint(probe), 4)
    threshold = float(np.quantile(scores.q["mean"][scores.positions >= 2], 0.3))
    runs = [generate(PROMPTS, tmp_path / f"b{b}", config(batch_size=b, dtype="float32"), stop=OnlineStop(probe, threshold, skip_first=2),
                     loaded=tiny) for b in (1, 3, 8)]
    first = runs[0]
    assert 0 < first.stats["n_stopped_early"] < len(first.trajectories) and first.stats["n_fallback_groups"] >= 1
    # the same resumes in every run: with one row, KV rows are kept for one stopped sample at most, so more resumes prefill
    # their context than with eight, where some come back from kept KV rows: both ways give the same samples
    assert first.stats["n_fallback_resumes_prefilled"] > runs[-1].stats["n_fallback_resumes_prefilled"]
    states = Store(first.out / "store").load_layer(4)
    for run in runs[1:]:
        assert [t.meta for t in run.trajectories] == [t.meta for t in first.trajectories]  # token ids, stops, fallbacks
        for key in ("tokens_generated", "tokens_resumed_for_fallback", "n_stopped_early", "n_fallback_groups"):
            assert run.stats[key] == first.stats[key]
        np.testing.assert_allclose(Store(run.out / "store").load_layer(4), states, rtol=1e-4, atol=1e-5)


def test_capture_of_no_layers_is_a_plain_forward(tiny):
    """The benchmark's decode loop without capture (capture_layers with no layers) runs the model unchanged."""
    from probekit.extract.forward import capture_layers

    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        plain = tiny.model(input_ids=ids).logits
        with capture_layers(tiny.model, []) as captured:
            hooked = tiny.model(input_ids=ids).logits
    assert captured == {} and torch.equal(plain, hooked)
