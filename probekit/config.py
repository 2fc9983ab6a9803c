"""Configuration with one source of truth: grouped dataclasses, validated in one place.

Each field carries its help text (`metadata["help"]`), so the CLI derives its
options from these classes (`cli/options.py`) and the checkpoint records them
as nested JSON (`FitConfig.to_dict`). A sweep holds one `FitConfig` as a
template and varies fields with `FitConfig.vary` (dataclasses.replace under
the hood); nothing is copied by hand.

Encoder widths are written the same way everywhere: `256x128` is ONE encoder
with two hidden layers, `linear` is a single Linear layer, and a comma
separates several encoders (only a sweep takes several).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from probekit.errors import ProbekitError

HEADS = ("linear", "mlp")
FEATURES = ("single", "concat", "mix")
POOLINGS = ("last", "mean", "attention")
CONTRASTIVES = ("official", "infonce", "token")
PAIRINGS = ("group", "cross")
GOAL_KINDS = ("mean", "kmeans")  # the goal prototypes every checkpoint has: the mean preferred state, k-means prototypes


def option(default: Any, help: str, *, flag: str | None = None, parse: Callable[[str], Any] | None = None,
           show: Callable[[Any], str] | None = None) -> Any:
    """A config field with its CLI help; `parse`/`show` convert to and from the CLI's text form."""
    return field(default=default, metadata={"help": help, "flag": flag, "parse": parse, "show": show})


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
class ProbeArch:
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


@dataclass(frozen=True)
class LossConfig:
    """L = Bradley-Terry + λ · goal-conditioned contrastive (Nath et al. 2024)."""

    lam: float = option(0.5, "Weight λ of the contrastive loss; 0 = pure Bradley-Terry (the contrastive term is not computed).", flag="--lam")
    K: int = option(8, "Contrastive (source, goal) and negative position pairs sampled per preference pair.", flag="--k")
    goal_min_frac: float = option(0.0, "Goals are sampled from positions >= this fraction of the chosen completion.")
    late_frac: float | None = option(None, "Draw negatives only from the last LATE_FRAC of each completion (default: uniform).")
    margin: float = option(0.0, "Margin in the Bradley-Terry loss: −log σ(r_c − r_r − margin).")
    contrastive: str = option("official", "Contrastive term: official (Nath et al.'s σ-cosine loss), infonce (cross-entropy of each "
                                          "source over the goals of the batch's pairs) or token (official plus a per-token term on "
                                          "rejected completions with a known first error: tokens before it near the chosen goal, after it away).")
    temperature: float = option(0.1, "Temperature of --contrastive infonce (cosines are divided by it).")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with early stopping on validation pairwise accuracy."""

    epochs: int = option(30, "Maximum training epochs.")
    batch_size: int = option(32, "Preference pairs per batch.")
    lr: float = option(1e-3, "AdamW learning rate.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    patience: int = option(5, "Stop after this many epochs without a better validation pairwise accuracy.")


@dataclass(frozen=True)
class SplitConfig:
    """Which GROUPS (prompts) train, validate and test; all answers to one prompt stay on one side."""

    valid_frac: float = option(0.2, "Fraction of groups held out for validation (early stopping, reported metrics).")
    test_frac: float = option(0.2, "Fraction of groups held out for the final test (`probekit eval --split test`).")
    split_file: Path | None = option(None, "Explicit split JSON {train: [groups], valid: [...], test: [...]} instead of a random one.")
    pairs: str = option("group", "Training pairs: group (the store's pairs, within a prompt) or cross (every label-1 x label-0 "
                                 "pair of the train split across prompts, subsampled to --max-pairs). Validation keeps the store's pairs.")
    max_pairs: int = option(20000, "Cap on the training pairs of --pairs cross (a seeded subsample).")


@dataclass(frozen=True)
class RunConfig:
    """What one fit reads and how it is seeded."""

    layer: int | None = option(None, "Layer of the store to read. Default: the store's first layer.")
    seed: int = option(0, "Seed of the split, initialisation, batch order, sampling and bootstrap.")
    goal_prototypes: int = option(1, "K > 1 also stores K k-means goal prototypes (Q = best cosine over them).")


@dataclass(frozen=True)
class ComputeConfig:
    """Where the probe runs and how much of a layer may sit in memory."""

    memory_budget_mb: float = option(2048.0, "Load the layer into memory when it fits this budget (MB), else stream rows from the shards.")
    device: str = option("cpu", "Torch device for the probe: cpu, cuda or cuda:N.")


@dataclass(frozen=True)
class EvalConfig:
    """How results are reported."""

    n_boot: int = option(1000, "Bootstrap resamples (of groups) for the 95% intervals.")
    baselines: bool = option(True, "Also report the length, logistic-regression and random baselines.")
    q_threshold: float | None = option(None, "Q threshold for error localisation. Default: midpoint of the mean last-token Q of label 1 and 0.")
    length_bins: int = option(5, "Length-controlled AUROC: number of completion-length strata (quantile bins fitted on the training split).")


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


def validate_device(device: str) -> None:
    _check(device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()) or device == "mps",
           f"--device '{device}': expected cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class FitConfig:
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

    def validate(self) -> FitConfig:
        """Refuse any setting that cannot train (the one place fit options are checked); returns self."""
        for group in self.groups().values():
            _finite_floats(group)
            _check_ints(group)
        p, loss, o, s, r = self.probe, self.loss, self.optim, self.split, self.run
        _check(all(w >= 1 for w in p.widths), f"--widths {show_widths(p.widths)}: widths must be positive")
        _check(p.rep_size >= 1 and p.head_hidden >= 1, "--rep-size and --head-hidden must be at least 1")
        check_choice("--head", p.head, HEADS)
        check_choice("--features", p.features, FEATURES)
        _check(p.features != "single" or not p.feature_layers,
               f"--feature-layers {show_layers(p.feature_layers)}: needs --features concat or mix (single reads --layer)")
        _check(all(x >= 0 for x in p.feature_layers) and len(set(p.feature_layers)) == len(p.feature_layers),
               f"--feature-layers {show_layers(p.feature_layers)}: layers must be distinct and >= 0")
        _check(p.features == "single" or r.layer is None,
               f"--layer {r.layer}: --features {p.features} reads --feature-layers (default: every layer of the store), not --layer")
        check_choice("--pooling", p.pooling, POOLINGS)
        check_choice("--contrastive", loss.contrastive, CONTRASTIVES)
        _check(loss.temperature > 0, f"--temperature {loss.temperature}: must be positive")
        _check(loss.lam >= 0, f"--lam {loss.lam}: must be >= 0")
        _check(loss.K >= 1, f"--k {loss.K}: must be at least 1")
        _check(0 <= loss.goal_min_frac < 1, f"--goal-min-frac {loss.goal_min_frac}: must be in [0, 1)")
        _check(loss.late_frac is None or 0 < loss.late_frac <= 1, f"--late-frac {loss.late_frac}: must be in (0, 1]")
        _check(o.epochs >= 1, f"--epochs {o.epochs}: must be at least 1")
        _check(o.batch_size >= 1, f"--batch-size {o.batch_size}: must be at least 1")
        _check(o.lr > 0, f"--lr {o.lr}: must be positive")
        _check(o.weight_decay >= 0, f"--weight-decay {o.weight_decay}: must be >= 0")
        _check(o.patience >= 1, f"--patience {o.patience}: must be at least 1")
        _check(0 <= s.valid_frac < 1 and 0 <= s.test_frac < 1 and s.valid_frac + s.test_frac < 1,
               f"--valid-frac and --test-frac must be in [0, 1) with a sum below 1, got {s.valid_frac} and {s.test_frac}")
        check_choice("--pairs", s.pairs, PAIRINGS)
        _check(s.max_pairs >= 1, f"--max-pairs {s.max_pairs}: must be at least 1")
        _check(r.layer is None or r.layer >= 0, f"--layer {r.layer}: must be >= 0")
        _check(r.goal_prototypes >= 1, f"--goal-prototypes {r.goal_prototypes}: must be at least 1")
        _check(self.compute.memory_budget_mb > 0, f"--memory-budget-mb {self.compute.memory_budget_mb}: must be positive")
        validate_device(self.compute.device)
        _check(self.eval.n_boot >= 1, f"--n-boot {self.eval.n_boot}: must be at least 1")
        _check(self.eval.length_bins >= 2, f"--length-bins {self.eval.length_bins}: must be at least 2")
        return self

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

    def to_dict(self) -> dict:
        """Nested, JSON-ready (paths as strings, widths as a list)."""
        def plain(v: Any) -> Any:
            return str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return {g: {k: plain(v) for k, v in dataclasses.asdict(obj).items()} for g, obj in self.groups().items()}

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        """Inverse of `to_dict` (unknown keys are an error: they mean another probekit version).

        Keys that an older probekit did not write (e.g. `pooling`) take their
        defaults, which are the behaviour of that older version.
        """
        kwargs = {}
        for f in fields(cls):
            group_cls = f.default_factory  # type: ignore[misc]
            values = dict(d.get(f.name, {}))
            for name in ("widths", "feature_layers"):
                if name in values:
                    values[name] = tuple(values[name])
            if values.get("split_file") is not None:
                values["split_file"] = Path(values["split_file"])
            try:
                kwargs[f.name] = group_cls(**values)
            except TypeError as exc:
                raise ProbekitError(f"fit options: {exc}") from None
        return cls(**kwargs)


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
class SweepConfig:
    """A template fit and the axes varied around it (every combination is one run)."""

    template: FitConfig = field(default_factory=FitConfig)
    lams: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)
    layers: tuple[int, ...] | None = None  # default: every layer of the store
    widths: tuple[tuple[int, ...], ...] = ((256,),)  # () = linear encoder
    ks: tuple[int, ...] = (8,)
    goals: tuple[str, ...] = ("mean",)
    seeds: tuple[int, ...] = (0, 1, 2)
    prototypes: int = 4
    split: str = "valid"
    axes: dict = field(default_factory=dict)  # ablation axis name -> tuple of values (default: the template's value)
    one_at_a_time: bool = False  # runs change at most one ablation axis from the template (else: every combination)

    def validate(self) -> SweepConfig:
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
        return self

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
class DemoConfig:
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

    def validate(self) -> None:
        if self.n_problems < 2 or self.solutions < 1 or self.epochs < 1 or self.n_boot < 1:
            raise ProbekitError("--n-problems must be at least 2, --solutions, --epochs and --n-boot at least 1")
        if self.generate_problems < 0 or self.generate_tokens < 1:
            raise ProbekitError("--generate-problems must be >= 0 and --generate-tokens >= 1")
