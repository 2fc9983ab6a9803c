"""Common checks over every config class, as scikit-learn runs its estimator checks over every estimator.

The classes are discovered, not listed: every dataclass in probekit's modules
whose fields carry help text (`probekit.config.option`) or are configs
themselves (FitConfig's groups, SweepConfig's template). A new config class is
checked without being named here, and `test_no_config_class_is_missed` fails
when one would slip past the discovery (named like a config, with a
`validate`, deriving from `Config`, or given to the CLI's `with_config`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil
import re
import typing
from pathlib import Path

import pytest
import typer.main

import probekit
from probekit.config import Config, FitConfig, SweepConfig
from probekit.errors import ProbekitError

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list:
    names = [m.name for m in pkgutil.walk_packages(probekit.__path__, "probekit.") if not m.name.endswith("__main__")]
    return [importlib.import_module(name) for name in names]  # an import error fails the collection: nothing skipped silently


def _sub(f: dataclasses.Field) -> type | None:
    """The config class a field holds (a group of FitConfig, SweepConfig's template), else None."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def _is_config(cls: type) -> bool:
    return any("help" in f.metadata or (_sub(f) is not None and _is_config(_sub(f))) for f in dataclasses.fields(cls))


def _dataclasses() -> list[type]:
    out = {}
    for mod in _modules():
        for obj in vars(mod).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == mod.__name__:
                out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [out[k] for k in sorted(out)]


DATACLASSES = _dataclasses()
CONFIGS = [cls for cls in DATACLASSES if _is_config(cls)]


def _leaves(cls: type, prefix: tuple = ()) -> list[tuple[tuple, dataclasses.Field, object]]:
    """(path, field, type) of every leaf option, through groups and nested configs."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        sub = _sub(f)
        out += _leaves(sub, prefix + (f.name,)) if sub is not None else [(prefix + (f.name,), f, hints[f.name])]
    return out


def _command_leaves(cls: type) -> list[tuple[tuple, dataclasses.Field, object]]:
    """The leaves one command would take from `cls`: its own and its groups', not a nested config's (checked on its own)."""
    nested = {f.name for f in dataclasses.fields(cls) if _sub(f) is not None and any(_sub(g) for g in dataclasses.fields(_sub(f)))}
    return [leaf for leaf in _leaves(cls) if leaf[0][0] not in nested]


def _replace(obj, path: tuple, value):
    inner = value if len(path) == 1 else _replace(getattr(obj, path[0]), path[1:], value)
    return dataclasses.replace(obj, **{path[0]: inner})


def _floats(cls: type) -> list[tuple[type, tuple, bool]]:
    """(class, path, whether a tuple of floats) of every float leaf (float, float | None, tuple[float, ...])."""
    out = []
    for path, _f, hint in _leaves(cls):
        args = typing.get_args(hint)
        if hint is float or (float in args and type(None) in args):
            out.append((cls, path, False))
        elif typing.get_origin(hint) is tuple and args and args[0] is float:
            out.append((cls, path, True))
    return out


def _id(cls: type) -> str:
    return cls.__name__


FLOATS = [case for cls in CONFIGS for case in _floats(cls)]


def test_discovery_finds_the_config_classes():
    names = {cls.__name__ for cls in CONFIGS}
    assert {"FitConfig", "ProbeArch", "EvalConfig", "SweepConfig", "DemoConfig", "ExtractOptions", "GenerateConfig", "SteerConfig",
            "FilterConfig", "SampleFields"} <= names
    assert len(FLOATS) > 10


def test_no_config_class_is_missed():
    found = set(CONFIGS)
    for cls in DATACLASSES:
        looks_like = (not cls.__name__.startswith("_") and re.search(r"(Config|Options|Fields)$", cls.__name__)) or "validate" in vars(cls)
        assert not looks_like or cls in found, f"{cls.__qualname__} looks like a config class but has no field made with option()"

    def subclasses(c):
        return [s for d in c.__subclasses__() for s in (d, *subclasses(d))]
    assert set(subclasses(Config)) <= found
    for path in sorted((ROOT / "cli").glob("*.py")):  # every class a command derives its options from
        mod = importlib.import_module(f"probekit_cli.{path.stem}")
        for name in re.findall(r"^@with_config\((\w+)", path.read_text(), re.M):
            assert getattr(mod, name) in found, f"{path.name}: with_config({name}) is not a discovered config class"


@pytest.mark.parametrize("cls", CONFIGS, ids=_id)
def test_frozen_dataclass_deriving_from_config(cls):
    assert cls.__dataclass_params__.frozen
    assert issubclass(cls, Config)
    assert callable(vars(cls).get("validate")), f"{cls.__name__} has no validate() of its own"


@pytest.mark.parametrize("cls", CONFIGS, ids=_id)
def test_every_leaf_has_help(cls):
    for path, f, _hint in _leaves(cls):
        assert str(f.metadata.get("help") or "").strip(), f"{cls.__name__}.{'.'.join(path)} has no help text"


@pytest.mark.parametrize("cls", CONFIGS, ids=_id)
def test_default_validates_and_returns_none(cls):
    assert cls().validate() is None


@pytest.mark.parametrize("cls", CONFIGS, ids=_id)
def test_to_dict_from_dict_round_trip(cls):
    obj = cls()
    text = json.dumps(obj.to_dict())
    back = cls.from_dict(json.loads(text))
    assert back == obj and type(back) is cls
    assert json.dumps(back.to_dict()) == text


@pytest.mark.parametrize("cls,path,in_tuple", FLOATS, ids=[f"{c.__name__}-{'.'.join(p)}" for c, p, _t in FLOATS])
def test_non_finite_floats_are_refused(cls, path, in_tuple):
    for value in (math.nan, math.inf, -math.inf):
        obj = _replace(cls(), path, (value,) if in_tuple else value)
        with pytest.raises(ProbekitError) as exc:
            obj.validate()
        assert str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("cls", CONFIGS, ids=_id)
def test_flags_are_unique_within_a_class(cls):
    from probekit_cli.options import option_decls

    seen: dict[str, str] = {}
    for path, f, hint in _command_leaves(cls):
        for decl in option_decls(f, hint):
            for flag in decl.split("/"):
                assert flag not in seen, f"{cls.__name__}: {flag} is the flag of both {seen[flag]} and {'.'.join(path)}"
                seen[flag] = ".".join(path)


def _commands(group, prefix=""):
    for name, cmd in group.commands.items():
        yield from _commands(cmd, f"{prefix}{name} ") if hasattr(cmd, "commands") else [(f"{prefix}{name}", cmd)]


def test_flags_are_unique_within_each_command():
    """A command that combines several classes (generate + steer, eval's compute + eval, a sweep's template + its axes)."""
    import probekit_cli.main  # noqa: F401  (registers every command)
    from probekit_cli.app import app

    commands = list(_commands(typer.main.get_command(app)))
    assert {"fit", "sweep", "steer", "eval", "data samples"} <= {name for name, _ in commands}
    for name, cmd in commands:
        flags = [o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("-")]
        repeated = sorted({o for o in flags if flags.count(o) > 1})
        assert not repeated, f"probekit {name}: {', '.join(repeated)} declared more than once"


# ---- FitConfig's JSON is what checkpoints record: its shape must not move -----------------------------
RECORDED = {  # FitConfig.to_dict() as checkpoints record it
    "probe": {"widths": [64, 32], "rep_size": 128, "head": "linear", "head_hidden": 64, "features": "mix", "feature_layers": [1, 2],
              "pooling": "last"},
    "loss": {"lam": 0.5, "K": 8, "goal_min_frac": 0.0, "late_frac": 0.5, "margin": 0.0, "contrastive": "official", "temperature": 0.1,
             "contrastive_pairs": "paired", "goal_agg": "cosine", "source_window": None, "goal_window": None, "sim_samples": None,
             "unsim_samples": None, "contrastive_reduce": None, "pair_margins": True},
    "optim": {"epochs": 30, "batch_size": 32, "lr": 0.001, "weight_decay": 0.01, "patience": 5},
    "split": {"valid_frac": 0.2, "test_frac": 0.2, "split_file": "s.json", "pairs": "group", "max_pairs": 20000},
    "run": {"layer": None, "seed": 0, "goal_prototypes": 1},
    "compute": {"memory_budget_mb": 2048.0, "device": "cpu"},
    "eval": {"n_boot": 1000, "baselines": True, "q_threshold": 0.1, "length_bins": 5},
}
CONFIG = FitConfig().vary(widths=(64, 32), split_file=Path("s.json"), late_frac=0.5, features="mix", feature_layers=(1, 2), q_threshold=0.1)


def test_fit_config_json_shape_is_the_checkpoints():
    assert CONFIG.to_dict() == RECORDED
    assert json.dumps(CONFIG.to_dict()) == json.dumps(RECORDED)  # key order too
    back = FitConfig.from_dict(json.loads(json.dumps(RECORDED)))
    assert back == CONFIG and back.probe.widths == (64, 32) and back.split.split_file == Path("s.json")


def test_fit_config_from_an_older_checkpoint():
    """Keys an older probekit did not write take their defaults; unknown keys are another version's, a one-line error."""
    old = {g: {k: v for k, v in values.items() if k not in ("pooling", "contrastive", "temperature", "pairs", "max_pairs", "length_bins",
                                                                  "contrastive_pairs", "goal_agg", "source_window", "goal_window", "pair_margins",
                                                                  "sim_samples", "unsim_samples", "contrastive_reduce")}
           for g, values in RECORDED.items() if g != "compute"}
    assert FitConfig.from_dict(old) == CONFIG
    with pytest.raises(ProbekitError, match="^fit options: .*'hidden'"):
        FitConfig.from_dict({**RECORDED, "probe": {**RECORDED["probe"], "hidden": 3}})


def test_sweep_config_round_trip_with_axes():
    cfg = SweepConfig(template=CONFIG, lams=(0.0, 1.0), layers=(2, 4), widths=((8,), ()), ks=(2,), goals=("mean", "kmeans"),
                      axes={"pooling": ("last", "mean")}, one_at_a_time=True)
    back = SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.widths == ((8,), ()) and back.axes == {"pooling": ("last", "mean")}
