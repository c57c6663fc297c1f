"""Run in a fresh process: QC of one slide; prints JSON with peak RSS, seconds and tiles kept.

`--whole-level` measures the old way (read the level, then shrink it) for comparison.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def _peak_rss() -> int:
    """Peak RSS of this process image in bytes: VmHWM, which exec resets (ru_maxrss would
    carry over the forking parent's peak, e.g. a pytest process that already holds 1 GB)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    path, mpp = sys.argv[1], float(sys.argv[2])
    import slideflow as sf

    t0 = time.perf_counter()
    wsi = sf.WSI(path, 256, 256 * 0.5, mpp=mpp)
    if "--whole-level" in sys.argv:
        import cv2

        img = wsi.reader.read_level(0)
        out = cv2.resize(img, (max(1, round(img.shape[1] / (wsi.qc_mpp / mpp))),
                               max(1, round(img.shape[0] / (wsi.qc_mpp / mpp)))),
                         interpolation=cv2.INTER_AREA)
        shape, kept = list(out.shape), None
    else:
        wsi.qc("otsu")
        shape, kept = list(wsi.qc_image.shape), len(wsi)
    seconds = time.perf_counter() - t0
    peak = _peak_rss()
    print(json.dumps({"peak_rss": peak, "seconds": seconds, "qc_shape": shape, "kept": kept,
                      "grid": list(wsi.grid_spec.shape)}))


if __name__ == "__main__":
    main()
