"""Typer options derived from probekit's config dataclasses: one source of truth for names, defaults and help.

`with_config(FitConfig)` turns every field of every group into a command-line
option (`--rep-size`, `--lam`, ...) with the field's default and help text, and
calls the command with the built, validated config as `config=`. A field may
name its flag (`metadata["flag"]`) and convert to and from text
(`metadata["parse"]`, `metadata["show"]`, e.g. encoder widths `256x128`).
Fields named in `axes` become comma-list options instead (a sweep's axes):
same flag and help, and the command receives {name: tuple of values} as `axes=`.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable, Iterable

import typer

from probekit.config import config_label

_KW = inspect.Parameter.KEYWORD_ONLY


def help_panel(cls: type, group: str | None) -> str:
    """The `--help` panel of a config field: its group's (`Loss options` for FitConfig.loss), or the config's own
    (`Filter options`), so a command of ~40 options lists them as the config groups them."""
    return f"{(group or config_label(cls)).capitalize()} options"


def _leaf_fields(cls: type) -> list[tuple[str | None, dataclasses.Field, Any]]:
    """(group name or None, field, resolved type) for a flat config or a config made of groups."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            sub = hints[f.name]
            sub_hints = typing.get_type_hints(sub)
            out += [(f.name, g, sub_hints[g.name]) for g in dataclasses.fields(sub)]
        else:
            out.append((None, f, hints[f.name]))
    return out


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def option_flag(f: dataclasses.Field, meta: dict | None = None) -> str:
    """A field's flag: `metadata["flag"]`, else --its-name."""
    meta = f.metadata if meta is None else meta
    return meta.get("flag") or "--" + f.name.replace("_", "-")


def option_decls(f: dataclasses.Field, typ: Any, meta: dict | None = None) -> list[str]:
    """The declarations of a field's option: its flag, and --flag/--no-flag for a bool (unless edited as text)."""
    meta = f.metadata if meta is None else meta
    flag = option_flag(f, meta)
    return [f"{flag}/--no-{flag[2:]}"] if typ is bool and meta.get("parse") is None else [flag]


def field_help(cls: type, name: str) -> str:
    """The help text of `cls`'s field `name`, for an option a command declares itself."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def config_parameters(cls: type, exclude: Iterable[str] = (), overrides: dict[str, dict] | None = None) -> list[inspect.Parameter]:
    """One keyword-only Typer option per config field (minus `exclude`); `overrides` change help/default/flag per field."""
    overrides = overrides or {}
    params = []
    for group, f, typ in _leaf_fields(cls):
        if f.name in exclude:
            continue
        meta = {**f.metadata, **overrides.get(f.name, {})}
        default = meta.get("default", _default(f))
        if meta.get("parse") is not None:  # edited as text on the command line
            typ, default = str, (meta["show"](default) if meta.get("show") else str(default))
        decls = option_decls(f, typ, meta)
        option = typer.Option(default, *decls, help=meta.get("help", ""), rich_help_panel=help_panel(cls, group))
        params.append(inspect.Parameter(f.name, _KW, default=option, annotation=typ))
    return params


def axis_parameters(cls: type, names: Iterable[str]) -> list[inspect.Parameter]:
    """One comma-list text option per named config field, with the field's flag, default and help."""
    params = []
    for group, f, _typ in _leaf_fields(cls):
        if f.name in names:
            meta = f.metadata
            default = meta["show"](_default(f)) if meta.get("show") else str(_default(f))
            help_text = meta.get("help", "") + " Comma list: the sweep runs each value."
            option = typer.Option(default, option_flag(f), help=help_text, rich_help_panel=help_panel(cls, group))
            params.append(inspect.Parameter(f.name, _KW, default=option, annotation=str))
    return params


def parse_axis(cls: type, name: str, text: str) -> tuple:
    """A comma-list option's values, each converted by the field's `parse` where it has one."""
    f = next(f for _g, f, _t in _leaf_fields(cls) if f.name == name)
    parse = f.metadata.get("parse") or (lambda v: v)
    return tuple(parse(item.strip()) for item in str(text).split(",") if item.strip())


def _parsed(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Option values with text-form fields (e.g. widths) converted by their `parse`."""
    fields = {f.name: f for _g, f, _t in _leaf_fields(cls)}
    return {k: fields[k].metadata["parse"](v) if fields[k].metadata.get("parse") and isinstance(v, str) else v for k, v in values.items()}


def build_config(cls: type, values: dict[str, Any], base: Any = None) -> Any:
    """The config `cls` from option values by field name (parsed where a field says so); missing fields keep `base`'s."""
    base = cls() if base is None else base
    groups: dict[str | None, dict[str, Any]] = {}
    for group, f, _typ in _leaf_fields(cls):
        if f.name in values:
            v = values[f.name]
            if f.metadata.get("parse") is not None and isinstance(v, str):
                v = f.metadata["parse"](v)
            groups.setdefault(group, {})[f.name] = v
    flat = groups.pop(None, {})
    nested = {g: dataclasses.replace(getattr(base, g), **vals) for g, vals in groups.items()}
    return dataclasses.replace(base, **flat, **nested)


def with_config(cls: type, *, exclude: Iterable[str] = (), overrides: dict[str, dict] | None = None,
                param: str = "config", base: Callable[[], Any] | None = None, partial: bool = False,
                axes: Iterable[str] = ()) -> Callable:
    """Decorator: add `cls`'s fields as options to a Typer command, which receives `config=cls(...)`.

    With `partial=True` the command receives a builder instead, to be called with
    the excluded fields it fills itself (e.g. paths): `config(trajectories=..., out=...)`.
    """
    axes = tuple(axes)
    exclude = set(exclude) | set(axes)

    def decorate(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn)
        filled = {param, "axes"} if axes else {param}  # parameters the decorator fills, not options
        own = [p.replace(kind=_KW, annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name not in filled]
        extra = config_parameters(cls, exclude, overrides) + axis_parameters(cls, axes)
        names = [p.name for p in extra if p.name not in axes]

        def command(**kwargs: Any) -> Any:
            if axes:
                kwargs["axes"] = {n: parse_axis(cls, n, kwargs.pop(n)) for n in axes}
            values = {n: kwargs.pop(n) for n in names}
            if partial:
                kwargs[param] = lambda **rest: cls(**_parsed(cls, values), **rest)
            else:
                kwargs[param] = build_config(cls, values, base() if base else None)
            return fn(**kwargs)

        command.__name__, command.__doc__, command.__module__ = fn.__name__, fn.__doc__, fn.__module__
        command.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in own + extra}
        return command

    return decorate
