"""Run in a child process by test_disk_full.py: bag generation onto a nearly full disk.

Slide A (88 tiles, ~180 kB of features) does not fit, slide B (20 tiles, ~42 kB) does, and
only if A's temporary files were released. Each format writes into its own folder, which is
removed afterwards (space back). Then, in h5: a run with the disk full, the filler removed, and
a rerun. A crash (h5py segfaulted here: exit 139) shows as a missing result line.
Prints one JSON line per step.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

FORMATS = ("pt", "h5", "atlaspatch", "zarr")


def main() -> None:
    fs, filler, slide = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    sys.path.insert(0, str(Path(__file__).parent))
    from outputs import outputs

    import slideflow as sf
    from slideflow.features import SlideJob, generate_bags
    from slideflow.selection import TileSelection

    ext = sf.build_feature_extractor("resnet18_imagenet", pretrained=False, resize=32,
                                     batch_size=64)
    jobs = [SlideJob("A", slide_path=slide, mpp=0.25), SlideJob("B", slide_path=slide, mpp=0.125)]

    def run(out: Path, fmt: str) -> dict:
        rep = generate_bags(jobs, ext, out, 32, 64, fmt=fmt, selection=TileSelection(qc=None),
                            progress=False)
        return {"done": {k: v["tiles"] for k, v in rep.done.items()}, "failed": rep.failed,
                "reused": rep.skipped, "files": outputs(out)}

    for fmt in FORMATS:
        out = fs / fmt
        print(json.dumps({"step": fmt, **run(out, fmt)}), flush=True)
        shutil.rmtree(out)
    out = fs / "again"
    full = run(out, "h5")
    filler.unlink()
    print(json.dumps({"step": "space-returns", "full": full, "after": run(out, "h5")}),
          flush=True)


if __name__ == "__main__":
    main()
