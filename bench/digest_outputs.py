"""Digests of extraction and bag outputs, to prove a refactor changed no byte.

Extracts the test slides to TFRecords (JPEG, PNG, Reinhard-normalised, shuffled subset, loose
tiles) and writes bags (.pt/H5/zarr from slides, .pt from TFRecords) with the embedded
EfficientNet-Lite0, then prints one sha256 per folder (over every file's relative path and bytes,
except the HTML report whose preview embeds timings) and one over everything.

Run the same command (the same --out: outputs record their slide and TFRecord paths) before
and after a change and compare the lines:

    .venv/bin/python bench/digest_outputs.py --out /tmp/digests
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from pathlib import Path

SLIDES = Path(os.environ.get("SLIDEFLOW_TEST_SLIDES",
                             Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"))
NAMES = ["CMU-1-Small-Region.svs", "CMU-1-Small-Region.jpeg.tiff", "CMU-1-Small-Region-dicom",
         "tcga-cr-7395-01a-01-ts1.svs"]
FIXED_MTIME_NS = 1_700_000_000 * 10**9


#: what a run leaves beside its outputs (times, host, pid): not outputs, never digested
RUN_FILES = {"summary.json", "failures.csv"}


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix != ".html" and p.name not in RUN_FILES:
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/sf-digests"))
    args = ap.parse_args()
    import slideflow as sf

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    slides = out / "slides"
    slides.mkdir(parents=True)
    for n in NAMES:
        (slides / n).symlink_to(SLIDES / n)
    P = sf.create_project(out / "proj", slides=slides)
    import pandas as pd

    ann = pd.read_csv(P.annotations)
    ann["mpp"] = ann["slide"].map({"CMU-1-Small-Region.jpeg": 0.499,
                                   "tcga-cr-7395-01a-01-ts1": 0.2527})
    ann.to_csv(P.annotations, index=False)
    ds = P.dataset(112, 224)
    ext = sf.build_feature_extractor("efficientnet_lite0_imagenet", batch_size=16)
    variants = {
        "jpg": dict(qc="otsu"),
        "png": dict(img_format="png"),
        "reinhard": dict(qc="otsu", normalizer="reinhard"),
        "shuffle": dict(max_tiles=10, shuffle=True, seed=3, jpeg_quality=80),
        "loose": dict(qc="otsu", save_tiles=True, jpeg_quality=90),
    }
    digests = {}
    for key, opts in variants.items():
        summary = ds.extract_tiles(report=False, progress=False, skip_extracted=False, **opts)
        assert not summary.failed, summary.failed
        tfr = ds.tfrecords_folder
        digests[f"tfrecords/{key}"] = folder_digest(tfr)
        if P.root.joinpath("tiles").exists():
            digests[f"tiles/{key}"] = folder_digest(P.root / "tiles")
        if key == "jpg":
            shutil.copytree(tfr, out / "tfr_jpg")
    shutil.rmtree(ds.tfrecords_folder)
    shutil.copytree(out / "tfr_jpg", ds.tfrecords_folder)
    # bags from TFRecords record each TFRecord's identity (size, mtime): fix the mtime of these
    # freshly written files so that two runs of this script digest alike
    for p in ds.tfrecords_folder.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    for fmt in ("pt", "h5", "zarr"):
        bags = out / f"bags_{fmt}"
        r = ds.generate_feature_bags(ext, bags, source="slides", qc="otsu", format=fmt,
                                     progress=False)
        assert not r.failed, r.failed
        digests[f"bags/slides/{fmt}"] = folder_digest(bags)
    r = ds.generate_feature_bags(ext, out / "bags_tfr", source="tfrecords", progress=False)
    assert not r.failed, r.failed
    digests["bags/tfrecords/pt"] = folder_digest(out / "bags_tfr")
    total = hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:16]
    for k, v in digests.items():
        print(f"{k:24s} {v}")
    print(f"{'ALL':24s} {total}")


if __name__ == "__main__":
    main()
