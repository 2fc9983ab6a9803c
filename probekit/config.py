"""Configuration with one source of truth: grouped dataclasses, validated in one place.

Each field carries its help text (`metadata["help"]`), so the CLI derives its
options from these classes (`cli/options.py`) and the checkpoint records them
as nested JSON (`FitConfig.to_dict`). A sweep holds one `FitConfig` as a
template and varies fields with `FitConfig.vary` (dataclasses.replace under
the hood); nothing is copied by hand.

Every config class (those here, and `ExtractOptions`, `GenerateConfig`,
`SteerConfig`, `FilterConfig`, `SampleFields` beside their stages) is a frozen
dataclass deriving from `Config`, which gives it `to_dict`/`from_dict` (one
implementation, flat or grouped), and has its own `validate() -> None`, which
raises a one-line `ProbekitError`; what parses an option (e.g.
`FilterConfig.thresholds`) is a method of its own.
`tests/test_config_common.py` runs the same checks over every one of them.

Encoder widths are written the same way everywhere: `256x128` is ONE encoder
with two hidden layers, `linear` is a single Linear layer, and a comma
separates several encoders (only a sweep takes several).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from probekit.errors import ProbekitError

HEADS = ("linear", "mlp")
FEATURES = ("single", "concat", "mix")
POOLINGS = ("last", "mean", "attention")
CONTRASTIVES = ("official", "infonce", "token")
CONTRASTIVE_PAIRS = ("paired", "kxk")  # K paired (source, goal) cosines, per-pair log; or the official code's K x K, batch means
GOAL_AGGS = ("cosine", "cosine_avg")  # the official --contrastive_strategy values
# Where the σ-cosine term's −log is taken: per preference pair, then the mean over pairs (the official code at its released
# micro-batch 1, gradients accumulated), or once over the whole batch's mean (the official code at micro-batch = batch)
CONTRASTIVE_REDUCES = ("example", "batch")
PAIRINGS = ("group", "cross")
GOAL_KINDS = ("mean", "kmeans")  # the goal prototypes every checkpoint has: the mean preferred state, k-means prototypes


def option(default: Any, help: str, *, flag: str | None = None, parse: Callable[[str], Any] | None = None,
           show: Callable[[Any], str] | None = None) -> Any:
    """A config field with its CLI help; `parse`/`show` convert to and from the CLI's text form.

    A mutable default (a dict or list) becomes a fresh copy per instance.
    """
    metadata = {"help": help, "flag": flag, "parse": parse, "show": show}
    if isinstance(default, (dict, list, set)):
        return field(default_factory=functools.partial(copy.copy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def config_label(cls: type) -> str:
    """How errors and help panels name a config's options: FitConfig -> 'fit', ExtractOptions -> 'extract', SampleFields -> 'sample fields'."""
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower().split()
    return " ".join(words[:-1] if len(words) > 1 and words[-1] in ("config", "options") else words)


def _plain(value: Any) -> Any:
    """JSON-ready: configs as objects, paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _typed(hint: Any, value: Any, label: str) -> Any:
    """`value` read back from JSON as the field's type says: configs, tuples (also nested) and paths; the rest as is."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _typed(kinds[0], value, label) if len(kinds) == 1 else value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, label)
    if hint is Path:
        return Path(value)
    if origin is tuple or hint is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], v, label) for v in value)
        return tuple(_typed(a, v, label) for a, v in zip(args, value)) if args else tuple(value)
    if origin is dict and len(args) == 2:
        return {k: _typed(args[1], v, label) for k, v in value.items()}
    return value


def _from_dict(cls: type, d: Any, label: str) -> Any:
    if not isinstance(d, dict):
        raise ProbekitError(f"{label} options: expected an object of options for {cls.__name__}, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    values = {k: _typed(hints[k], v, label) if k in names else v for k, v in d.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ProbekitError(f"{label} options: {exc}") from None


class Config:
    """What every config class shares (each is a frozen dataclass with its own `validate() -> None`).

    `to_dict` is JSON-ready (nested for a config made of groups, paths as
    strings, tuples as lists) and `from_dict` is its inverse. Unknown keys are
    an error (they mean another probekit version); keys that an older probekit
    did not write (e.g. `pooling`) take their defaults, which are the
    behaviour of that older version.
    """

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        return _from_dict(cls, d, config_label(cls))


def parse_widths(spec: str) -> tuple[int, ...]:
    """One encoder: '256' -> (256,), '256x128' -> (256, 128), 'linear' -> ()."""
    text = str(spec).strip().lower()
    if "," in text:
        raise ProbekitError(f"--widths '{spec}': one encoder is written like 256 or 256x128 (x between layers); "
                            "comma lists of encoders are for `probekit sweep`")
    if text in ("linear", "0"):
        return ()
    try:
        widths = tuple(int(w) for w in text.split("x"))
    except ValueError:
        raise ProbekitError(f"--widths '{spec}': expected widths like 256 or 256x128, or linear") from None
    if any(w < 1 for w in widths):
        raise ProbekitError(f"--widths '{spec}': widths must be positive")
    return widths


def show_widths(widths: tuple[int, ...]) -> str:
    return "x".join(str(w) for w in widths) if widths else "linear"


def parse_layers(spec: str) -> tuple[int, ...]:
    """'10,15,20' -> (10, 15, 20); '' -> () (every layer of the store)."""
    try:
        return tuple(int(x) for x in str(spec).split(",") if x.strip())
    except ValueError:
        raise ProbekitError(f"--feature-layers '{spec}': expected a comma list of layer numbers like 10,15,20") from None


def show_layers(layers: tuple[int, ...]) -> str:
    return ",".join(str(x) for x in layers)


def parse_widths_list(spec: str) -> list[tuple[int, ...]]:
    """Several encoders: '64,256,128x128,linear' -> [(64,), (256,), (128, 128), ()]."""
    out = [parse_widths(item) for item in str(spec).split(",") if item.strip()]
    if not out:
        raise ProbekitError("--widths: give at least one encoder (e.g. 256 or 128x128 or linear)")
    return out


@dataclass(frozen=True)
class ProbeArch(Config):
    """The probe network: φ (an MLP or one Linear layer) and the reward head on φ."""

    widths: tuple[int, ...] = option((256,), "Hidden widths of the encoder φ: 256, 256x128 (two hidden layers), or linear (one Linear layer).",
                                     parse=parse_widths, show=show_widths)
    rep_size: int = option(128, "Size of the representation φ (the goal space).")
    head: str = option("linear", "Reward head on φ: linear or mlp (the official value_head_strategy).")
    head_hidden: int = option(64, "Hidden width of the mlp reward head.")
    features: str = option("single", "Input of φ: single (the --layer), concat (the --feature-layers side by side) or mix "
                                     "(a learned softmax-weighted sum of the --feature-layers, each standardised).")
    feature_layers: tuple[int, ...] = option((), "Layers read by --features concat or mix, e.g. 10,15,20. Default: every layer of the store.",
                                             parse=parse_layers, show=show_layers)
    pooling: str = option("last", "Reward of a (partial) completion: the head on φ of its last token (last), on the mean φ of its "
                                  "tokens (mean), or on an attention-weighted mean with a learned query (attention). Q stays per token.")

    @property
    def encoder(self) -> str:
        return "mlp" if self.widths else "linear"

    def validate(self) -> None:
        _types(self)
        _check(all(w >= 1 for w in self.widths), f"--widths {show_widths(self.widths)}: widths must be positive")
        _check(self.rep_size >= 1 and self.head_hidden >= 1, "--rep-size and --head-hidden must be at least 1")
        check_choice("--head", self.head, HEADS)
        check_choice("--features", self.features, FEATURES)
        _check(self.features != "single" or not self.feature_layers,
               f"--feature-layers {show_layers(self.feature_layers)}: needs --features concat or mix (single reads --layer)")
        _check(all(x >= 0 for x in self.feature_layers) and len(set(self.feature_layers)) == len(self.feature_layers),
               f"--feature-layers {show_layers(self.feature_layers)}: layers must be distinct and >= 0")
        check_choice("--pooling", self.pooling, POOLINGS)


# Positions drawn per preference pair, at most: kxk holds samples x samples cosines per pair and batch, so a million
# (a typo) would ask torch for tens of GB; the official scripts draw 16.
MAX_SAMPLES = 1024


@dataclass(frozen=True)
class LossConfig(Config):
    """L = Bradley-Terry + λ · goal-conditioned contrastive (Nath et al. 2024)."""

    lam: float = option(0.5, "Weight λ of the contrastive loss (the official --contrastive_loss_beta); 0 = pure Bradley-Terry "
                             "(the contrastive term is not computed).", flag="--lam")
    K: int = option(8, "Contrastive (source, goal) and negative position pairs sampled per preference pair (the official "
                       "--sim_samples and --unsim_samples, both K unless --sim-samples/--unsim-samples say otherwise).", flag="--k")
    goal_min_frac: float = option(0.0, "probekit's sampler: goals are sampled from positions >= this fraction of the chosen completion.")
    late_frac: float | None = option(None, "probekit's sampler: draw negatives only from the last LATE_FRAC of each completion "
                                           "(default: uniform).")
    margin: float = option(0.0, "Margin in the Bradley-Terry loss: −log σ(r_c − r_r − margin), added to each pair's own margin.")
    contrastive: str = option("official", "Contrastive term: official (Nath et al.'s σ-cosine loss, combined as --contrastive-pairs "
                                          "says), infonce (cross-entropy of each source over the goals of the batch's pairs) or "
                                          "token (official plus a per-token term on rejected completions with a known first error: "
                                          "tokens before it near the chosen goal, after it away).")
    temperature: float = option(0.1, "Temperature of --contrastive infonce (cosines are divided by it).")
    contrastive_pairs: str = option("paired", "Which cosines the official term averages: paired (K (source, goal) pairs, source "
                                              "before goal, −log of each preference pair's mean, then the mean over pairs) or kxk "
                                              "(the official code: all K×K source/goal and chosen/rejected combinations, by default one −log "
                                              "of the mean over the whole batch, see --contrastive-reduce; it samples with "
                                              "--source-window/--goal-window, default 0).")
    goal_agg: str = option("cosine", "cosine, or cosine_avg (the official --contrastive_strategy cosine_avg): average the K sampled "
                                     "goal states, and the K rejected-side states, before the cosine.")
    source_window: float | None = option(None, "The official --source_state_percentile P: sources (and the chosen side of negatives) "
                                               "at positions counted from the completion's end as −(floor(f·n)+1), f uniform in [P, 1], "
                                               "so P = 0 is the whole completion and P = 0.5 its first half. Selects the official sampler.")
    goal_window: float | None = option(None, "The official --goal_state_percentile P: goals (and the rejected side of negatives) in the "
                                             "same convention as --source-window. Selects the official sampler.")
    sim_samples: int | None = option(None, "The official --sim_samples: (source, goal) positions drawn per preference pair for the "
                                           "positive cosines (kxk: a K×K matrix of this size). Default: --k.")
    unsim_samples: int | None = option(None, "The official --unsim_samples: chosen and rejected positions drawn per preference pair "
                                             "for the negative cosines. Default: --k.")
    contrastive_reduce: str | None = option(None, "Where the σ-cosine term takes its −log: example (per preference pair, then the mean "
                                                  "over pairs: the official code at its released --micro_train_batch_size 1) or batch "
                                                  "(once, of the mean over the whole batch: the official code at micro-batch = "
                                                  "--batch-size). Default: example for paired, batch for kxk.")
    pair_margins: bool = option(True, "Add each pair's `margin` field from the store's pairs.jsonl (where present; 0 where absent) "
                                      "to --margin: TRL's margin column, the official --margin_loss. (--pairs cross makes its own "
                                      "pairs, without margins.)")

    @property
    def k_sim(self) -> int:
        """Positions drawn per pair for the positive cosines: --sim-samples, else --k."""
        return self.K if self.sim_samples is None else self.sim_samples

    @property
    def k_unsim(self) -> int:
        """Positions drawn per pair and side for the negative cosines: --unsim-samples, else --k."""
        return self.K if self.unsim_samples is None else self.unsim_samples

    @property
    def reduce(self) -> str:
        """The σ-cosine term's reduction: --contrastive-reduce, else the one --contrastive-pairs has always used."""
        if self.contrastive_reduce is not None:
            return self.contrastive_reduce
        return "batch" if self.contrastive_pairs == "kxk" else "example"

    @property
    def official_sampling(self) -> bool:
        """Whether the contrastive rows are drawn as the official code draws them (kxk or a window), not by probekit's sampler."""
        return self.contrastive_pairs == "kxk" or self.source_window is not None or self.goal_window is not None

    def validate(self) -> None:
        _types(self)
        check_choice("--contrastive", self.contrastive, CONTRASTIVES)
        check_choice("--contrastive-pairs", self.contrastive_pairs, CONTRASTIVE_PAIRS)
        check_choice("--goal-agg", self.goal_agg, GOAL_AGGS)
        if self.contrastive_reduce is not None:
            check_choice("--contrastive-reduce", self.contrastive_reduce, CONTRASTIVE_REDUCES)
        for flag, window in (("--source-window", self.source_window), ("--goal-window", self.goal_window)):
            _check(window is None or 0 <= window <= 1, f"{flag} {window}: must be in [0, 1]")
        _check(self.contrastive != "infonce" or (self.contrastive_pairs, self.goal_agg) == ("paired", "cosine"),
               "--contrastive infonce: takes neither --contrastive-pairs kxk nor --goal-agg cosine_avg (they shape the official term)")
        _check(not self.official_sampling or (self.goal_min_frac == 0 and self.late_frac is None),
               "--goal-min-frac and --late-frac are probekit's sampler; --contrastive-pairs kxk, --source-window and --goal-window "
               "sample as the official code does: give one or the other")
        _check(self.temperature > 0, f"--temperature {self.temperature}: must be positive")
        _check(self.lam >= 0, f"--lam {self.lam}: must be >= 0")
        for flag, n in (("--k", self.K), ("--sim-samples", self.sim_samples), ("--unsim-samples", self.unsim_samples)):
            _check(n is None or 1 <= n <= MAX_SAMPLES, f"{flag} {n}: must be between 1 and {MAX_SAMPLES} (positions drawn per "
                                                       f"preference pair; the official scripts draw 16)")
        _check(self.contrastive != "infonce" or self.contrastive_reduce is None,
               "--contrastive infonce: takes no --contrastive-reduce (it shapes the official term)")
        _check(0 <= self.goal_min_frac < 1, f"--goal-min-frac {self.goal_min_frac}: must be in [0, 1)")
        _check(self.late_frac is None or 0 < self.late_frac <= 1, f"--late-frac {self.late_frac}: must be in (0, 1]")


@dataclass(frozen=True)
class OptimConfig(Config):
    """AdamW with early stopping on validation pairwise accuracy."""

    epochs: int = option(30, "Maximum training epochs.")
    batch_size: int = option(32, "Preference pairs per batch.")
    lr: float = option(1e-3, "AdamW learning rate.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    patience: int = option(5, "Stop after this many epochs without a better validation pairwise accuracy.")

    def validate(self) -> None:
        _types(self)
        _check(self.epochs >= 1, f"--epochs {self.epochs}: must be at least 1")
        _check(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1")
        _check(self.lr > 0, f"--lr {self.lr}: must be positive")
        _check(self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be >= 0")
        _check(self.patience >= 1, f"--patience {self.patience}: must be at least 1")


@dataclass(frozen=True)
class SplitConfig(Config):
    """Which GROUPS (prompts) train, validate and test; all answers to one prompt stay on one side."""

    valid_frac: float = option(0.2, "Fraction of groups held out for validation (early stopping, reported metrics).")
    test_frac: float = option(0.2, "Fraction of groups held out for the final test (`probekit eval --split test`).")
    split_file: Path | None = option(None, "Explicit split JSON {train: [groups], valid: [...], test: [...]} instead of a random one.")
    pairs: str = option("group", "Training pairs: group (the store's pairs, within a prompt) or cross (every label-1 x label-0 "
                                 "pair of the train split across prompts, subsampled to --max-pairs). Validation keeps the store's pairs.")
    max_pairs: int = option(20000, "Cap on the training pairs of --pairs cross (a seeded subsample).")

    def validate(self) -> None:
        _types(self)
        _check(0 <= self.valid_frac < 1 and 0 <= self.test_frac < 1 and self.valid_frac + self.test_frac < 1,
               f"--valid-frac and --test-frac must be in [0, 1) with a sum below 1, got {self.valid_frac} and {self.test_frac}")
        check_choice("--pairs", self.pairs, PAIRINGS)
        _check(self.max_pairs >= 1, f"--max-pairs {self.max_pairs}: must be at least 1")


@dataclass(frozen=True)
class RunConfig(Config):
    """What one fit reads and how it is seeded."""

    layer: int | None = option(None, "Layer of the store to read. Default: the store's first layer.")
    seed: int = option(0, "Seed of the split, initialisation, batch order, sampling and bootstrap.")
    goal_prototypes: int = option(1, "K > 1 also stores K k-means goal prototypes (Q = best cosine over them).")

    def validate(self) -> None:
        _types(self)
        _check(self.layer is None or self.layer >= 0, f"--layer {self.layer}: must be >= 0")
        _check(self.goal_prototypes >= 1, f"--goal-prototypes {self.goal_prototypes}: must be at least 1")


@dataclass(frozen=True)
class ComputeConfig(Config):
    """Where the probe runs and how much of a layer may sit in memory."""

    memory_budget_mb: float = option(2048.0, "Load the layer into memory when it fits this budget (MB), else stream rows from the shards.")
    device: str = option("cpu", "Torch device for the probe: cpu, cuda or cuda:N.")

    def validate(self) -> None:
        _types(self)
        _check(self.memory_budget_mb > 0, f"--memory-budget-mb {self.memory_budget_mb}: must be positive")
        validate_device(self.device)


@dataclass(frozen=True)
class EvalConfig(Config):
    """How results are reported."""

    n_boot: int = option(1000, "Bootstrap resamples (of groups) for the 95% intervals.")
    baselines: bool = option(True, "Also report the length, logistic-regression and random baselines.")
    q_threshold: float | None = option(None, "Q threshold for error localisation. Default: midpoint of the mean last-token Q of label 1 and 0.")
    length_bins: int = option(5, "Length-controlled AUROC: number of completion-length strata (quantile bins fitted on the training split).")

    def validate(self) -> None:
        _types(self)
        _check(self.n_boot >= 1, f"--n-boot {self.n_boot}: must be at least 1")
        _check(self.length_bins >= 2, f"--length-bins {self.length_bins}: must be at least 2")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ProbekitError(msg)


def check_choice(flag: str, value: str, choices) -> None:
    """Refuse an option value outside its choices, naming the option and every choice (the one wording of all such errors)."""
    _check(value in choices, f"{flag} '{value}': choose from {', '.join(choices)}")


def _finite_floats(group: Any) -> None:
    for f in fields(group):
        v = getattr(group, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            raise ProbekitError(f"{flag} {v}: must be a finite number")


def _check_ints(group: Any) -> None:
    for f in fields(group):
        v = getattr(group, f.name)
        if isinstance(v, bool) and f.type not in ("bool", bool):
            raise ProbekitError(f"{f.name}: expected a number, got {v!r}")


def _types(group: Any) -> None:
    """The checks every fit option group runs before its values: finite floats, no bool for a number."""
    _finite_floats(group)
    _check_ints(group)


def validate_device(device: str) -> None:
    _check(device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()) or device == "mps",
           f"--device '{device}': expected cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class FitConfig(Config):
    """Everything a fit needs besides its store and output folder."""

    probe: ProbeArch = field(default_factory=ProbeArch)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    run: RunConfig = field(default_factory=RunConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def groups(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def validate(self) -> None:
        """Refuse any setting that cannot train (the one place fit options are checked).

        Every group's types come first, then each group's values in order (and
        the one check across groups after the probe's).
        """
        for group in self.groups().values():
            _types(group)
        self.probe.validate()
        p, r = self.probe, self.run
        _check(p.features == "single" or r.layer is None,
               f"--layer {r.layer}: --features {p.features} reads --feature-layers (default: every layer of the store), not --layer")
        for group in (self.loss, self.optim, self.split, self.run, self.compute, self.eval):
            group.validate()

    def vary(self, **changes: Any) -> FitConfig:
        """A copy with fields changed by their (unique) names, e.g. vary(lam=0, seed=2, widths=(128,))."""
        where = field_groups(type(self))
        unknown = sorted(set(changes) - set(where))
        if unknown:
            raise ProbekitError(f"unknown fit option(s): {', '.join(unknown)}")
        groups = self.groups()
        for name, value in changes.items():
            g = where[name]
            groups[g] = dataclasses.replace(groups[g], **{name: value})
        return dataclasses.replace(self, **groups)


def field_groups(cls: type) -> dict[str, str]:
    """Field name -> name of the group that holds it, for a config made of groups."""
    out = {}
    for g in fields(cls):
        for f in fields(g.default_factory):  # type: ignore[arg-type]
            out[f.name] = g.name
    return out


# ---- the runners' configs: a sweep varies a FitConfig template; the demo has a few knobs -------------
ABLATION_AXES = ("features", "pooling", "contrastive", "pairs")
_DEFAULTS = {name: getattr(getattr(FitConfig(), field_groups(FitConfig)[name]), name) for name in ABLATION_AXES}


@dataclass(frozen=True)
class SweepConfig(Config):
    """A template fit and the axes varied around it (every combination is one run)."""

    template: FitConfig = field(default_factory=FitConfig)
    lams: tuple[float, ...] = option((0.0, 0.1, 0.5, 1.0), "Comma list of contrastive weights λ; 0 (pure Bradley-Terry) is always added.",
                                     flag="--lam")
    layers: tuple[int, ...] | None = option(None, "Comma list of layers. Default: every layer of the store, so each store layer "
                                                  "multiplies the fits (3 layers x 4 λ x 3 seeds: 36); the sweep prints its layers, "
                                                  "λ, seeds and number of runs before the first fit.")
    widths: tuple[tuple[int, ...], ...] = option(((256,),), "Comma list of encoders, each like 256, 128x128 (two hidden layers) or linear.")
    ks: tuple[int, ...] = option((8,), "Comma list of K (contrastive samples per pair); λ = 0 runs ignore K.", flag="--k")
    goals: tuple[str, ...] = option(("mean",), "Comma list of goal kinds for Q-values: mean, kmeans (evaluated on the same runs).", flag="--goal")
    seeds: tuple[int, ...] = option((0, 1, 2), "Comma list of seeds (split, init, sampling); results are mean ± std over them.")
    prototypes: int = option(4, "Number of k-means goal prototypes when --goal includes kmeans.")
    split: str = option("valid", "Split the runs are compared on: valid (default; keep test for the final number), test or all.")
    axes: dict[str, tuple[str, ...]] = option({}, "Ablation axes varied around the template, by name (features, pooling, contrastive, "
                                                  "pairs) -> values; an axis not given keeps the template's value.")
    one_at_a_time: bool = option(False, "Of the ablation axes' combinations, run only the template's and those that change one axis "
                                        "from it (an ablation study); default: every combination.")

    def validate(self) -> None:
        for g in self.goals:
            if g not in GOAL_KINDS:
                raise ProbekitError(f"--goal must be a comma list of {', '.join(GOAL_KINDS)}, got '{g}'")
        if not self.seeds or not self.ks or not self.widths or not self.goals or not self.lams:
            raise ProbekitError("sweep: --lam, --seeds, --k, --widths and --goal each need at least one value")
        if "kmeans" in self.goals and self.prototypes < 2:
            raise ProbekitError("--goal kmeans needs --prototypes of at least 2")
        if self.split not in ("train", "valid", "test", "all"):
            raise ProbekitError(f"--split must be train, valid, test or all, got '{self.split}'")
        unknown = sorted(set(self.axes) - set(ABLATION_AXES))
        if unknown or not all(self.axes.values()):
            raise ProbekitError(f"sweep axes: {', '.join(unknown) or 'an empty axis'}; the ablation axes are {', '.join(ABLATION_AXES)}, each with values")
        for run in self.runs([0]):  # every axis value through the one fit validation
            self.fit_config(run).validate()
        for group in self.template.groups().values():  # also the template's values the runs replace (λ): all finite
            _finite_floats(group)

    def axis(self, name: str) -> tuple:
        """The values of an ablation axis: as given, else the template's value."""
        return tuple(self.axes.get(name) or (getattr(getattr(self.template, field_groups(FitConfig)[name]), name),))

    def runs(self, layers: list[int]) -> list[dict]:
        """λ = 0 is always included and ignores K and the contrastive variant (one run per layer, widths and seed)."""
        lams = sorted(set(float(x) for x in self.lams) | {0.0})
        out = []
        for features in self.axis("features"):
            for layer, lam, widths, seed in itertools.product(layers if features == "single" else [None], lams, self.widths, self.seeds):
                for K in ([None] if lam == 0 else self.ks):  # layer outermost: load each once
                    for pooling, pairs in itertools.product(self.axis("pooling"), self.axis("pairs")):
                        for contrastive in ([None] if lam == 0 else self.axis("contrastive")):
                            out.append({"lam": lam, "layer": None if layer is None else int(layer), "widths": tuple(widths), "K": K,
                                        "seed": int(seed), "features": features, "pooling": pooling, "contrastive": contrastive, "pairs": pairs})
        return [r for r in out if len(self.changed(r)) <= 1] if self.one_at_a_time else out

    def changed(self, run: dict) -> list[str]:
        """The ablation axes on which `run` differs from the template (a λ = 0 run has no contrastive variant)."""
        base = {name: getattr(getattr(self.template, field_groups(FitConfig)[name]), name) for name in ABLATION_AXES}
        return [name for name in ABLATION_AXES if run[name] is not None and run[name] != base[name]]

    def fit_config(self, run: dict) -> FitConfig:
        single = run["features"] == "single"
        cfg = self.template.vary(lam=run["lam"], layer=run["layer"], widths=run["widths"], seed=run["seed"],
                                 goal_prototypes=self.prototypes if "kmeans" in self.goals else 1, features=run["features"],
                                 feature_layers=() if single else self.template.probe.feature_layers, pooling=run["pooling"], pairs=run["pairs"])
        cfg = cfg.vary(K=run["K"]) if run["K"] is not None else cfg
        return cfg.vary(contrastive=run["contrastive"]) if run["contrastive"] is not None else cfg


def widths_name(widths: tuple[int, ...]) -> str:
    return show_widths(widths)


def ablation_name(run: dict) -> str:
    """The run's ablation values that differ from the defaults, e.g. 'mix pool-mean'; '' for none."""
    return " ".join(f"{name}-{run[name]}" if name in ("pooling", "pairs") else str(run[name])
                    for name in ABLATION_AXES if run.get(name) not in (None, _DEFAULTS[name]))


@dataclass(frozen=True)
class DemoConfig(Config):
    """The demo's few knobs; everything else is each stage's default."""

    model: str = option("smollm2-135m", "Frozen model: smollm2-135m (bundled), gemma3-270m, a local folder or .gguf file.")
    n_problems: int = option(300, "Synthetic problems to generate; each gets --solutions sampled solutions.")
    solutions: int = option(4, "Solutions per problem (the majority-voting group).")
    lam: float = option(0.5, "λ of the goal-conditioned probe (the baseline always uses λ = 0).", flag="--lam")
    layers: str | None = option(None, "Layer to extract (default: the model's middle layer).")
    epochs: int = option(30, "Maximum training epochs per probe (early stopping on validation pairwise accuracy).")
    seed: int = option(0, "Seed for data generation, splits and training.")
    max_batch_tokens: int | None = option(None, "Token budget of one extraction batch (default: 2048 on a CPU, 8192 on a GPU).")
    n_boot: int = option(1000, "Bootstrap resamples for the intervals.")
    generate_problems: int = option(12, "New problems sampled in the generation stage (plain vs online early stopping by the goal probe); 0 skips it.")
    generate_tokens: int = option(48, "Most new tokens per sample in the generation stage.")
    model_dtype: str = option("float32", "Dtype the model runs in for extraction and generation. float32 by default, so the "
                                         "states do not depend on how extraction's batches are composed (bfloat16 rounding does) "
                                         "and the numbers match across machines; auto is faster on CPUs with bfloat16 instructions.")
    threads: int = option(2, "Torch CPU threads for extraction, evaluation and generation (the fits run on one thread), fixed so "
                             "the numbers do not depend on the machine's cores "
                             "(0 = keep torch's default or --threads).")

    def validate(self) -> None:
        _finite_floats(self)
        if self.n_problems < 2 or self.solutions < 1 or self.epochs < 1 or self.n_boot < 1:
            raise ProbekitError("--n-problems must be at least 2, --solutions, --epochs and --n-boot at least 1")
        if self.generate_problems < 0 or self.generate_tokens < 1:
            raise ProbekitError("--generate-problems must be >= 0 and --generate-tokens >= 1")
        if self.threads < 0:
            raise ProbekitError(f"--threads {self.threads}: must be >= 0 (0 = torch's default)")
        if self.model_dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ProbekitError(f"--model-dtype {self.model_dtype}: must be auto, float32, float16 or bfloat16")
