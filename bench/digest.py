"""Digest of every output file a fixed run writes: proves a refactor changes no bytes.

    python bench/digest.py > digest.txt

The run writes under one fixed folder (`/tmp/slideflow-digest-run`, or `SLIDEFLOW_DIGEST_DIR`):
outputs record absolute slide paths, so two runs must use the same path to compare.

Runs, on CMU-1-Small-Region.svs (the test slides folder, `SLIDEFLOW_TEST_SLIDES` overrides it):
tile extraction to TFRecords (JPEG and PNG) and feature bags with the embedded default
extractor in every bag format (.pt, .h5, .zarr), from the slide and from the TFRecords; then
prints `sha256  relative/path` for every file under the project folder, sorted.

Every file is compared as bytes except JSON files, which are digested after dropping the keys
`slideflow.io.bags_config.VOLATILE_KEYS` names (timestamps, durations, versions, hostnames) at
any depth: they hold run-dependent values by design. Two runs of one commit give equal digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

SLIDES = Path(os.environ.get(
    "SLIDEFLOW_TEST_SLIDES", Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
))
SLIDE = "CMU-1-Small-Region.svs"
TILE_PX, TILE_UM = 112, 224
OUT = Path(os.environ.get("SLIDEFLOW_DIGEST_DIR", "/tmp/slideflow-digest-run"))
MARK = ".slideflow-digest-run"  # only a folder this script made is ever removed


def _scrub(obj, volatile: frozenset[str]):
    if isinstance(obj, dict):
        return {k: _scrub(v, volatile) for k, v in obj.items() if k not in volatile}
    if isinstance(obj, list):
        return [_scrub(v, volatile) for v in obj]
    return obj


def digest_file(path: Path) -> str:
    from slideflow.io.bags_config import VOLATILE_KEYS

    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_scrub(json.loads(data), VOLATILE_KEYS), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def run(out: Path) -> Path:
    import slideflow as sf

    if out.exists():
        if not (out / MARK).exists():
            raise SystemExit(f"{out} exists and was not made by this script: pick another "
                             "SLIDEFLOW_DIGEST_DIR")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARK).touch()
    folder = out / "slides"
    folder.mkdir(parents=True)
    (folder / SLIDE).symlink_to(SLIDES / SLIDE)
    project = sf.create_project(out / "project", slides=folder)
    ds = project.dataset(TILE_PX, TILE_UM)
    ext = sf.build_feature_extractor("efficientnet_lite0_imagenet", batch_size=8)
    for fmt in ("pt", "h5", "zarr"):
        ds.generate_feature_bags(ext, out / "project" / "bags" / f"slides-{fmt}", format=fmt,
                                 source="slides", qc="otsu", progress=False)
    ds.extract_tiles(qc="otsu", img_format="png", report=False, progress=False)
    ds.generate_feature_bags(ext, out / "project" / "bags" / "tfrecords-pt", source="tfrecords",
                             progress=False)
    project.extract_tiles(TILE_PX * 2, TILE_UM, qc="otsu", img_format="jpg", report=False,
                          progress=False)
    return out / "project"


def main() -> None:
    root = run(OUT)
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        lines.append(f"{digest_file(path)}  {path.relative_to(root)}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
