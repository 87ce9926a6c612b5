"""Exports benchmark: peak memory of the streamed CSV and Parquet export of a large dataset's samples
against loading every row at once.

Usage: ``.venv/bin/python bench/exports.py [--samples 200000] [--root DIR]``

Fills a fresh SQLite data root (a temporary folder by default) with a dataset of ``--samples`` sample rows
and a map of them (``bench/points_api.py``'s ``fill``: rows inserted in bulk, no images or activations),
then runs each way of writing every sample out in a fresh subprocess and reads the growth of its peak RSS
(the highest RSS sampled every 5 ms during the export minus the RSS before it, every library already
imported; ``ru_maxrss``'s growth is printed too) and its time:

* ``stream-csv``, ``stream-parquet``: ``common.research.exports.samples_table`` through ``table_csv`` and
  ``write_table_parquet``, the functions the API's ``?format=csv|parquet`` answers use;
* ``all-json``: every row as ``sample_to_dict`` in one list, then ``json.dumps`` (the JSON list in one go);
* ``all-pandas``: one pandas DataFrame of every row, then ``to_parquet``.

Prints figures and the ratios against the baselines; decides nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("stream-csv", "stream-parquet", "all-json", "all-pandas")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssPeak(threading.Thread):
    """The highest current RSS seen every 5 ms (``ru_maxrss`` alone hides a rise below the import peak)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = rss_mib(), threading.Event()

    def run(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_mib())


def child(mode: str, root: Path, dataset_id: int) -> dict:
    """One export in this (fresh) process: every import done and the database opened before measuring."""
    import pandas as pd
    import pyarrow.parquet  # noqa: F401
    from sqlalchemy import select

    from common.models import Sample
    from common.platform.db import make_engine, session_factory
    from common.research.exports import samples_table, table_csv, write_table_parquet
    from common.research.history import sample_to_dict
    from tests.support.settings import make_settings

    sessions = session_factory(make_engine(make_settings(root)))
    with sessions() as s:  # the connection and the ORM mappers ready before the measurement
        s.scalars(select(Sample).limit(1)).all()
    out = root / f"out-{mode}"
    before_peak, before, sampler = peak_mib(), rss_mib(), RssPeak()
    sampler.start()
    start = time.perf_counter()
    if mode == "stream-csv":
        with open(out, "w") as fh:
            for piece in table_csv(samples_table(sessions, dataset_id)):
                fh.write(piece)
    elif mode == "stream-parquet":
        write_table_parquet(samples_table(sessions, dataset_id), out)
    else:
        with sessions() as s:
            rows = [
                sample_to_dict(smp)
                for smp in s.scalars(
                    select(Sample).where(Sample.dataset_id == dataset_id).order_by(Sample.id)
                )
            ]
        if mode == "all-json":
            out.write_text(json.dumps({"samples": rows}))
        else:
            frame = pd.DataFrame(rows).drop(columns=["label_weights"])
            frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
            frame.to_parquet(out)
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    peak = max(sampler.peak, rss_mib())
    return {"mode": mode, "growth_mib": peak - before, "maxrss_growth_mib": peak_mib() - before_peak,
            "seconds": seconds, "bytes": out.stat().st_size}  # fmt: skip


def run_child(mode: str, root: Path, dataset_id: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--root", str(root),
           "--dataset", str(dataset_id)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--root", type=Path, help="a data root to fill (default: a temporary folder)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.root, args.dataset)))
        return

    from sqlalchemy import select

    from bench.points_api import fill
    from common.models import Embedding
    from common.platform import migrate
    from common.platform.db import make_engine, session_factory
    from tests.support.settings import make_settings

    with tempfile.TemporaryDirectory(prefix="latentlab-bench-exports-") as tmp:
        root = args.root or Path(tmp)
        settings = make_settings(root)
        migrate.upgrade(settings)
        engine = make_engine(settings)
        start = time.perf_counter()
        emb_id, _token = fill(session_factory(engine), args.samples)
        with session_factory(engine)() as s:
            dataset_id = s.scalar(select(Embedding.dataset_id).where(Embedding.id == emb_id))
        engine.dispose()
        print(f"{platform.node()} python {platform.python_version()}, {os.cpu_count()} cpus; "
              f"{args.samples:,} samples written in {time.perf_counter() - start:.1f} s")  # fmt: skip
        results = {mode: run_child(mode, root, dataset_id) for mode in MODES}
    for r in results.values():
        print(f"{r['mode']:>15}: peak RSS +{r['growth_mib']:7.1f} MiB "
              f"(ru_maxrss +{r['maxrss_growth_mib']:.1f})  {r['seconds']:6.1f} s  "
              f"{r['bytes'] / 2**20:6.1f} MiB written")  # fmt: skip
    for stream in ("stream-csv", "stream-parquet"):
        for base in ("all-json", "all-pandas"):
            a, b = results[stream], results[base]
            print(f"{stream} vs {base}: {b['growth_mib'] / max(a['growth_mib'], 0.5):.1f}x less peak memory, "
                  f"{b['seconds'] / a['seconds']:.2f}x the speed")  # fmt: skip


if __name__ == "__main__":
    main()
