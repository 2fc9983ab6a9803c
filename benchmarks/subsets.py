"""Deterministic subsets of trajectory files: the first N groups, in file order.

The reproduction runs on subsets so that it fits a 2-core CPU; taking whole
groups in file order keeps every problem's solutions together and makes the
subset (hence the store's data fingerprint, hence its cache) stable.
"""

from __future__ import annotations

import json
from pathlib import Path

from probekit.io import write_text


def first_groups(src: Path, dst: Path, n_groups: int) -> Path:
    """Copy the records of the first `n_groups` groups of `src` (JSONL) to `dst`, unchanged.

    Pairs files beside `src` are filtered the same way. Rewrites only when
    the content would change, so the file's hash (the extraction cache key) is stable.
    """
    keep: list[str] = []
    groups: set[str] = set()
    ids: set[str] = set()
    for line in Path(src).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["group"] not in groups:
            if len(groups) == n_groups:
                break
            groups.add(rec["group"])
        keep.append(line)
        ids.add(str(rec["id"]))
    _write_if_changed(dst, "\n".join(keep) + "\n")
    pairs_src = Path(src).with_name("pairs.jsonl")
    if pairs_src.exists():
        pairs = [l for l in pairs_src.read_text(encoding="utf-8").splitlines()
                 if l.strip() and str(json.loads(l)["chosen"]) in ids and str(json.loads(l)["rejected"]) in ids]
        _write_if_changed(Path(dst).with_name("pairs.jsonl"), "\n".join(pairs) + "\n")
    return Path(dst)


def _write_if_changed(path: Path, text: str) -> None:
    path = Path(path)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)


def concatenate(parts: list[Path], dst: Path) -> Path:
    """Trajectory files (and their pairs files) joined in order into one dataset at `dst`."""
    for name in ("trajectories.jsonl", "pairs.jsonl"):
        text = "".join(Path(p).with_name(name).read_text(encoding="utf-8") for p in parts)
        _write_if_changed(Path(dst).with_name(name), text)
    return Path(dst)


def gsm8k_first_problems(data_dir: Path, work: Path, n_problems: int) -> Path:
    """The labelled GSM8K model solutions (calculator annotations stripped) of the first `n_problems` test problems,
    with their pairs, as `work/data/trajectories.jsonl` (the whole set is written once under `work/all`)."""
    from probekit.data.gsm8k import labelled_solutions
    from probekit.data.schema import derive_pairs, write_pairs, write_trajectories

    full = Path(work) / "all" / "trajectories.jsonl"
    trajs = labelled_solutions(Path(data_dir) / "gsm8k" / "example_model_solutions.jsonl", strip_calculator=True)
    write_trajectories(full, trajs)
    write_pairs(full.with_name("pairs.jsonl"), derive_pairs(trajs))
    return first_groups(full, Path(work) / "data" / "trajectories.jsonl", n_problems)
