"""tf.data vs the PyTorch loader over the same TFRecords, in one run (tiles/s, decoded uint8).

Tiles are real H&E (256 px crops of CMU-1-Small-Region.svs, JPEG q100 4:4:4 as extract_tiles
writes them), spread over 8 TFRecords. Both loaders yield every tile once in the same plan
order (shuffled, seed 0); torch uses a DataLoader with `--workers` processes, tf.data its
parallel map. Also reported: TensorFlow's JPEG decode vs ours on the same tiles (max |diff|).

Run: .venv/bin/python bench/bench_tf.py [--n 4000] [--workers 2] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_tfrecord import load_tiles

from slideflow.io import imgcodec
from slideflow.io.tfrecord import TFRecordWriter
from slideflow.tf_runtime import import_tensorflow


def write_tfrecords(root: Path, tiles: np.ndarray, centres: np.ndarray, files: int) -> list[Path]:
    raws = imgcodec.encode_batch(tiles, "jpg", 100)
    paths = []
    for f in range(files):
        path = root / f"slide{f}.tfrecords"
        with TFRecordWriter(path) as w:
            for i in range(f, len(raws), files):
                w.write(raws[i], f"slide{f}", int(centres[i, 0]), int(centres[i, 1]))
        paths.append(path)
    return paths


def time_torch(paths: list[Path], batch: int, workers: int) -> tuple[float, int]:
    from torch.utils.data import DataLoader

    from slideflow.io.torch_data import TileDataset

    ds = TileDataset(paths, shuffle=True, seed=0)
    dl = DataLoader(ds, batch_size=batch, num_workers=workers)
    t0, n = time.perf_counter(), 0
    for img, *_ in dl:
        n += len(img)
    return n / (time.perf_counter() - t0), n


def time_tf(paths: list[Path], batch: int, shuffle: bool) -> tuple[float, int]:
    import slideflow.io.tensorflow as sftf

    ds = sftf.interleave(paths, batch_size=batch, shuffle=shuffle, seed=0)
    t0, n = time.perf_counter(), 0
    for img, _ in ds:
        n += int(img.shape[0])
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tf = import_tensorflow()
    import slideflow.io.tensorflow as sftf

    tiles, centres = load_tiles(args.n, args.px)
    res: dict[str, object] = {"tiles": len(tiles), "px": args.px, "cpu": platform.processor()
                              or platform.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_tfrecords(Path(tmp), tiles, centres, args.files)
        time_tf(paths, args.batch, True)  # warm the page cache and tf.function traces
        res["torch_loader_tiles_s"], n1 = time_torch(paths, args.batch, args.workers)
        res["tf_data_shuffled_tiles_s"], n2 = time_tf(paths, args.batch, True)
        res["tf_data_sequential_tiles_s"], n3 = time_tf(paths, args.batch, False)
        assert n1 == n2 == n3 == len(tiles)
        res["tf_shuffled_over_torch"] = round(res["tf_data_shuffled_tiles_s"]
                                              / res["torch_loader_tiles_s"], 2)
        res["tf_sequential_over_torch"] = round(res["tf_data_sequential_tiles_s"]
                                                / res["torch_loader_tiles_s"], 2)
        raws = imgcodec.encode_batch(tiles[:500], "jpg", 100)
        diffs = [int(np.abs(sftf.decode_image(tf.constant(r)).numpy().astype(int)
                            - imgcodec.decode(r).astype(int)).max()) for r in raws]
        res["jpeg_q100_tf_vs_ours_max_abs_diff"] = max(diffs)
        res["jpeg_q100_tf_vs_ours_identical_fraction"] = round(
            sum(d == 0 for d in diffs) / len(diffs), 3)
    for k, v in res.items():
        print(f"{k:>42}: {round(v) if isinstance(v, float) and v > 100 else v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
