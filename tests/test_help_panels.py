"""`--help` of a command with many options lists them in panels, one per config group (issue 21, item 3).

`fit --help` was one flat list of ~40 options although FitConfig groups them (probe, loss, optim, split, run,
compute, eval). The panels come from the groups in `cli/options.py`, so each option must sit in its own group's
panel: a field moved to another group moves in the help too.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from typer.testing import CliRunner

import probekit_cli.main  # noqa: F401  (registers the commands)
from probekit.config import FitConfig, SweepConfig
from probekit.filter.config import FilterConfig
from probekit_cli.app import app
from probekit_cli.options import option_flag

PANEL = re.compile(r"^[╭┏]─ (.+?) ─")


def panels(command: list[str]) -> dict[str, str]:
    """{panel title: its text} of `probekit COMMAND --help` at a width where no flag is cut."""
    res = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert res.exit_code == 0, res.output
    out, title = {}, None
    for line in res.output.splitlines():
        found = PANEL.match(line)
        if found:
            title = found.group(1)
            out[title] = ""
        elif title:
            out[title] += line + "\n"
    return out


def test_fit_help_lists_each_option_in_its_config_groups_panel():
    shown = panels(["fit"])
    groups = [f.name for f in dataclasses.fields(FitConfig)]
    assert list(shown) == ["Options", *[f"{g.capitalize()} options" for g in groups]]
    for group in groups:
        for f in dataclasses.fields(getattr(FitConfig(), group)):
            flag = option_flag(f)
            assert flag in shown[f"{group.capitalize()} options"], (group, flag)
            assert flag not in shown["Options"], flag
    assert "--store" in shown["Options"] and "--out" in shown["Options"]


@pytest.mark.parametrize("command,config,panel", [(["sweep"], SweepConfig, "Sweep options"), (["filter"], FilterConfig, "Filter options")])
def test_other_commands_with_many_options_have_panels_too(command, config, panel):
    shown = panels(command)
    assert panel in shown and len(shown) >= 2
    if config is FilterConfig:
        assert all(option_flag(f) in shown[panel] for f in dataclasses.fields(config))
    else:
        assert "--layers" in shown[panel] and "--seeds" in shown[panel] and "--lam" in shown[panel]
        assert "Loss options" in shown and "--contrastive" in shown["Loss options"]  # an ablation axis stays in its group
