"""Run every benchmark in bench/, one after the other (`make bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_slide.py", "bench_tfrecord.py", "bench_extract.py", "bench_model.py",
           "bench_features.py", "bench_tf.py"]

if __name__ == "__main__":
    failed = []
    for script in SCRIPTS:
        print(f"\n===== {script} =====", flush=True)
        if subprocess.run([sys.executable, str(HERE / script)], cwd=HERE).returncode != 0:
            failed.append(script)
    if failed:
        sys.exit(f"failed: {failed}")
