"""Sharing a probe: `RewardProbe.load` from the Hub (a pinned snapshot in the Hub cache, offline errors) and `rp.save`'s folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from probekit.errors import ProbekitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["Tom has 12 apples and buys 3 more.", "Mia has 5 pears and eats 2."]
COMPLETIONS = ["Step 1: 12 + 3 = 15. A: 15", "A: 3"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def ckpt(tiny_model_dir, tmp_path_factory) -> Path:
    from tests.helpers import tiny_chat_probe

    return tiny_chat_probe(tiny_model_dir, tmp_path_factory.mktemp("sharing"), goal_prototypes=3)


@pytest.fixture(scope="module")
def probe(ckpt):
    from probekit.reward import RewardProbe

    return RewardProbe.load(ckpt, device="cpu")


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _same_scores(a, b) -> None:
    for goal in ("mean", "kmeans"):
        x, y = a.score(PROMPTS, COMPLETIONS, q=True, goal=goal), b.score(PROMPTS, COMPLETIONS, q=True, goal=goal)
        np.testing.assert_array_equal(x.rewards, y.rewards)
        for qa, qb in zip(x.q, y.q):
            np.testing.assert_array_equal(qa, qb)


def test_a_saved_folder_loads_back_and_scores_identically_without_the_training_store(probe, ckpt, tmp_path):
    from probekit.reward import RewardProbe

    saved = probe.save(tmp_path / "shared")
    assert sorted(p.name for p in saved.iterdir() if not p.name.startswith(".")) == [
        "README.md", "config.json", "goals.safetensors", "metrics.json", "split.json", "weights.safetensors"]
    store = ckpt.parent / "store"
    shutil.move(store, tmp_path / "store-away")
    try:
        again = RewardProbe.load(saved, device="cpu")
    finally:
        shutil.move(tmp_path / "store-away", store)
    assert again.checkpoint.fingerprint == probe.checkpoint.fingerprint  # baselines scored with the original still apply
    _same_scores(probe, again)
    config = json.loads((saved / "config.json").read_text())
    model_name = config["inputs"]["model"]["name"]
    absolute = {s for f in ("config.json", "metrics.json") for s in _strings(json.loads((saved / f).read_text())) if s.startswith("/")}
    assert absolute == {model_name}  # the frozen model's name is what loads it; no other path of this machine
    assert config["store"]["path"] == "(not shipped: store)" and config["inputs"]["model"]["source"] == Path(model_name).name


def test_the_model_card_says_what_the_probe_reads_and_how_well_it_did(probe, tmp_path):
    card = (probe.save(tmp_path / "shared") / "README.md").read_text()
    spec, metrics = probe.spec, probe.checkpoint.metrics
    auroc = metrics["valid"]["probe"]["auroc"]
    assert card.startswith("---\nlibrary_name: probekit\n")
    for needle in (spec.model.name, spec.model.file_sha256, "| input layers | 2 |", "| template | chat |",
                   spec.rendering["chat_template_sha256"], "| max length | 96 |", spec.store_cache_key[:16],
                   f"{len(probe.checkpoint.split['train'])} train", "On the valid split",
                   f"| AUROC (reward) | {auroc['value']:.3f} | [{auroc['lo']:.3f}, {auroc['hi']:.3f}] |",
                   "AUROC (Q, k-means goals)", "unbounded", "RewardProbe.load(", probe.checkpoint.fingerprint):
        assert needle in card, needle


def test_an_older_checkpoint_is_saved_self_describing(probe, ckpt, tmp_path):
    from probekit.reward import RewardProbe

    old = tmp_path / "old"
    shutil.copytree(ckpt, old)
    config = json.loads((old / "config.json").read_text())
    config.pop("inputs")
    (old / "config.json").write_text(json.dumps(config))
    RewardProbe.load(old, device="cpu", model=probe.loaded).save(tmp_path / "shared")  # the training store is still there
    saved = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert saved["inputs"]["template"] == "chat" and saved["inputs"]["max_length"] == 96
    _same_scores(probe, RewardProbe.load(tmp_path / "shared", device="cpu", model=probe.loaded))


def test_saving_follows_the_output_rules(probe, ckpt, tmp_path):
    probe.save(tmp_path / "shared")
    probe.save(tmp_path / "shared")  # its own output: replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ProbekitError, match="not empty"):
        probe.save(mine)
    (mine / "README.md").write_text("my card")
    with pytest.raises(ProbekitError, match="probekit did not write"):
        probe.save(mine, overwrite=True)
    with pytest.raises(ProbekitError, match="holds the input"):
        probe.save(ckpt)
    assert (mine / "README.md").read_text() == "my card"


def _hub_cache(root: Path, folder: Path) -> Path:
    """The Hub cache as snapshot_download leaves it after downloading `folder` as org/probe at COMMIT (main)."""
    repo = root / "models--org--probe"
    shutil.copytree(folder, repo / "snapshots" / COMMIT, ignore=shutil.ignore_patterns(".probekit-*"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, as here: huggingface_hub's offline mode, with an empty Hub cache of the test's own."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_a_hub_id_loads_from_the_hub_cache_at_a_pinned_revision(probe, tmp_path, offline):
    from probekit.reward import RewardProbe

    _hub_cache(offline, probe.save(tmp_path / "shared"))
    for revision in (None, COMMIT):
        rp = RewardProbe.load("org/probe", revision=revision, device="cpu", model=probe.loaded)
        assert rp.checkpoint.path == offline / "models--org--probe" / "snapshots" / COMMIT
        _same_scores(probe, rp)


@pytest.mark.parametrize("revision", [None, "v2"])
def test_a_hub_id_that_is_not_cached_offline_is_one_line(offline, revision):
    from probekit.reward import RewardProbe

    with pytest.raises(ProbekitError) as exc:
        RewardProbe.load("org/probe", revision=revision, device="cpu")
    message = str(exc.value)
    assert "\n" not in message and "checkpoint 'org/probe': no such folder here, and the Hugging Face Hub could not give it" in message
    assert ("at revision v2" in message) == (revision == "v2") and "offline" in message


def test_an_unreachable_hub_is_one_line(monkeypatch, tmp_path):
    """A real connection attempt, refused at once (a closed loopback port stands in for the Hub)."""
    from huggingface_hub import constants

    from probekit.reward import RewardProbe

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ProbekitError, match="no such folder here, and the Hugging Face Hub could not give it"):
        RewardProbe.load("org/probe", device="cpu")


def test_a_local_folder_stays_local(ckpt, tmp_path):
    from probekit.reward import RewardProbe

    with pytest.raises(ProbekitError, match="pins a Hub download, but checkpoint .* is a local path"):
        RewardProbe.load(ckpt, revision=COMMIT, device="cpu")
    with pytest.raises(ProbekitError, match="no such checkpoint folder"):
        RewardProbe.load(tmp_path / "nope", device="cpu")
