"""What a store's checksums cost, beside the reads they guard, in one process on one planted store.

    .venv/bin/python benchmarks/adhoc/checksum_cost.py ROWS [WORK]
      ROWS e.g. 1e5 or 1e6; WORK default /tmp/probekit-checksum-cost (the store is kept there)

The store is run_scale.py's (576-wide float16 states of one layer, 512 trajectories of ~200 rows a shard),
written through the real writer, so its manifest has checksums. Medians of 3 repeats, with the files in the page
cache (as after a first read; cold reads add the same disk time to the hash and to the read):

* open        `Store(path)`, with checksums (meta sha256 compared) and with them removed from the manifest;
* hash        the sha256 of every shard file (`Store.check_file`: what `iter_shards` adds the first time);
* whole read  `iter_shards` over the layer, as float32 (`load_layer`, in-memory fits) and stored dtype (scoring);
* epoch read  `read_rows` of every row, 64 whole trajectories a call in shuffled order (a streamed epoch's reads);
* scoring     `score_store` of every row with a probe fitted for one epoch (`filter`'s whole read, with its work).

Prints one JSON object; not recorded in benchmarks/results (README, Reliability, quotes it).
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.planted import LAYER, fit_config, write_planted_store  # noqa: E402
from probekit.pipeline import fit_probe  # noqa: E402
from probekit.probe.scoring import Scorer, score_store  # noqa: E402
from probekit.store import MANIFEST, Store  # noqa: E402


def median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("rows", type=lambda x: int(float(x)), metavar="ROWS", help="stored rows of the planted store, e.g. 1e5 or 1e6")
    ap.add_argument("work", nargs="?", type=Path, default=Path("/tmp/probekit-checksum-cost"), metavar="WORK",
                    help="where the store is kept (default /tmp/probekit-checksum-cost)")
    ap.set_defaults(memory_budget_mb=256.0, device="cpu", n_boot=50)  # what fit_config reads from run_scale's arguments


def main(args) -> None:
    n = args.rows
    work = args.work / f"{n}"
    store_path, legacy = work / "store", work / "legacy"
    if not (store_path / MANIFEST).exists():
        shutil.rmtree(work, ignore_errors=True)
        write_planted_store(store_path, n)
    legacy.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((store_path / MANIFEST).read_text())
    manifest["shards"].pop("checksums")
    (legacy / MANIFEST).write_text(json.dumps(manifest))
    for shard in store_path.glob("shard-*.h5"):  # the same files, under a manifest without checksums
        if not (legacy / shard.name).exists():
            (legacy / shard.name).symlink_to(shard)

    store = Store(store_path)
    scorer = Scorer.from_checkpoint(fit_probe(store, work / "fit", fit_config(args, 1, lam=0.5), overwrite=True), kinds=["mean"])
    shards = range(len(store.shard_paths))
    for _ in store.iter_shards(LAYER, as_float32=False):  # warm the page cache
        pass
    rng = np.random.default_rng(0)
    order = rng.permutation(len(store))
    batches = [np.concatenate([np.arange(store.meta.row_start[t], store.meta.row_end[t]) for t in np.sort(order[i:i + 64])])
               for i in range(0, len(order), 64)]


    unhashed = iter([Store(store_path) for _ in range(3)])  # one per repeat: a Store hashes each shard once


    def hash_all() -> None:
        fresh = next(unhashed)
        for s in shards:
            fresh.check_file(s)


    def read_whole(as_float32: bool) -> None:
        for _ in store.iter_shards(LAYER, as_float32=as_float32):  # `store` has hashed every shard: reads only
            pass


    def read_epoch() -> None:
        for rows in batches:
            store.read_rows(LAYER, rows)


    result = {
        "rows": int(store.n_rows), "trajectories": len(store), "shards": len(store.shard_paths),
        "bytes": sum(p.stat().st_size for p in store.shard_paths),
        "open_with_checksums_s": median_seconds(lambda: Store(store_path)),
        "open_without_checksums_s": median_seconds(lambda: Store(legacy)),
        "hash_s": median_seconds(hash_all),
        "whole_read_float32_s": median_seconds(lambda: read_whole(True)),
        "whole_read_stored_dtype_s": median_seconds(lambda: read_whole(False)),
        "epoch_read_s": median_seconds(read_epoch),
        "scoring_s": median_seconds(lambda: score_store(store, scorer, LAYER)),
    }
    for key in ("whole_read_float32_s", "whole_read_stored_dtype_s", "epoch_read_s", "scoring_s"):
        result[f"hash_over_{key[:-2]}"] = round(result["hash_s"] / result[key], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
