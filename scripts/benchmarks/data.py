"""``python scripts/benchmark.py data``: image-source throughput at 64², 128², 256² (images/s).

For each size:
- ``Ellipses`` phantoms (bounding-box renderer), one process: images/s of ``dataset[i]`` (fresh
  indices, so no cache helps), the best of ``--repeats`` runs;
- the same through a ``DataLoader`` (batch ``--batch``, ``--workers`` worker processes), i.e. what
  one GPU's training loop would see from that many CPU workers;
- ``DicomFolder`` on 512² int16 DICOM slices (CT_small.dcm, which pydicom ships, upsampled to the
  usual CT matrix and written to a temporary folder): read, HU, crop, resize, window;
- ``SliceFolder`` on the same slices as 16-bit PNGs.

A GPU config's need is its training throughput (images/s) at that size; compare it with the
DataLoader row (per-worker rate × workers). Prints a markdown table; writes JSON.

    python scripts/benchmark.py data
    python scripts/benchmark.py data --sizes 128 --n 64 --workers 0 2
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from .prior import machine


def rate(get, n: int, repeats: int, start: int = 0) -> float:
    """Best images/s over ``repeats`` runs of ``n`` fresh items each."""
    best = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            get(start + r * n + i)
        best = min(best, time.perf_counter() - t)
    return n / best


def loader_rate(dataset, batch: int, workers: int, n_batches: int) -> float:
    from torch.utils.data import DataLoader

    dl = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False,
                    persistent_workers=False, prefetch_factor=4 if workers else None)
    it = iter(dl)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch / (time.perf_counter() - t)


def write_slices(folder: str, n: int) -> tuple[str, str]:
    """``n`` 512² CT slices as DICOM (from pydicom's CT_small.dcm) and as 16-bit PNG (HU + 1024)."""
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    big = np.kron(src.pixel_array, np.ones((4, 4), dtype=src.pixel_array.dtype))  # 128² → 512²
    dcm, png = os.path.join(folder, "dicom"), os.path.join(folder, "png")
    os.makedirs(dcm), os.makedirs(png)
    src.Rows, src.Columns, src.PixelData = big.shape[0], big.shape[1], big.tobytes()
    for i in range(n):
        src.InstanceNumber = i + 1
        src.save_as(os.path.join(dcm, f"{i:04d}.dcm"))
        stored = (big.astype(np.int64) * int(src.RescaleSlope) + int(src.RescaleIntercept) + 1024).clip(0, 65535)
        Image.fromarray(stored.astype(np.uint16)).save(os.path.join(png, f"{i:04d}.png"))
    return dcm, png


def main(argv: list[str] | None = None) -> int:
    from datamodules.dicom import DicomFolder, SliceFolder
    from datamodules.sources import Ellipses

    p = argparse.ArgumentParser(prog="benchmark.py data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    p.add_argument("--n", type=int, default=40, help="items per timing run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in this process")
    p.add_argument("--json", default="runs/benchmark_data.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"machine": machine(args.threads), "load_average_before": os.getloadavg(), "args": vars(args), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        dcm, png = write_slices(tmp, args.n)
        for size in args.sizes:
            ell = Ellipses(size=size, length=10**6, seed=0)
            row = {"size": size, "ellipses_img_s": rate(ell.__getitem__, args.n, args.repeats)}
            for w in args.workers:
                n_batches = max(2, (args.n * args.repeats) // args.batch)
                row[f"ellipses_loader_{w}w_img_s"] = loader_rate(ell, args.batch, w, n_batches)
            dicom, slices = DicomFolder(dcm, size=size), SliceFolder(png, size=size)
            row["dicom_512_img_s"] = rate(lambda i: dicom[i % len(dicom)], args.n, args.repeats)
            row["png16_512_img_s"] = rate(lambda i: slices[i % len(slices)], args.n, args.repeats)
            report["results"].append(row)
            print(json.dumps(row), flush=True)
    report["load_average_after"] = os.getloadavg()
    cols = [k for k in report["results"][0] if k != "size"]
    print("\n| size | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for r in report["results"]:
        print(f"| {r['size']}² | " + " | ".join(f"{r[c]:.0f}" for c in cols) + " |")
    print(f"\nload average before/after: {report['load_average_before']} / {report['load_average_after']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.json}")
    return 0
