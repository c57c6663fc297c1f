#!/usr/bin/env bash
# One GPU session for issue 9's table, prepared here and run once on the accelerator machine.
#
#   bench/gpu_session.sh prepare      # on the CPU machine, from the repo root
#   -> device tool: command "bash bench/gpu_session.sh run", carry [".whl"], timeout ~540 s
#
# prepare: the wheels the GPU image lacks (../shared/tools/gpu-wheels.sh plus the DICOM reader),
# the TIFF-family/DICOM test slides and the bench's 10k pyramid, all in the ignored .whl/ folder
# (~55 MB of the 64 MiB that may travel): only the checkout travels (never ../shared), and the
# image has no imagecodecs, which tifffile needs to write the JPEG pyramid there. run: installs them into /tmp/site (no network there), then runs
# bench/bench_gpu.py (default: cuda, 10k pyramid, threads 1/4/16, batch 256, bf16), writing the
# table to $OUT/bench_gpu.txt as each row is measured; extra arguments go to bench_gpu.py.
# Rehearsed on the CPU (2026-11-29) in a Python 3.11 venv holding only the image's packages
# plus these wheels: `bench_gpu.py --device cpu --quick --gpu-rows-on-cpu` ran every row.
set -euo pipefail
cd "$(dirname "$0")/.."

SLIDES=(CMU-1-Small-Region.svs CMU-1-Small-Region.jpeg.tiff CMU-1-Small-Region-dicom
        multiframe_camelyon_challenge_image.dcm)
# pure-Python readers the image lacks (wsidicom's own needs included; numpy/pillow are there)
EXTRA=(wsidicom pydicom cachetools dicomweb-client marshmallow universal-pathlib fsspec
       pathlib-abc requests urllib3 idna certifi charset-normalizer retrying)

case "${1:-}" in
  prepare)
    ../shared/tools/gpu-wheels.sh "${EXTRA[@]}"
    mkdir -p .whl/slides
    for s in "${SLIDES[@]}"; do cp -r "../shared/data/slides/$s" .whl/slides/; done
    mkdir -p .whl/cache
    .venv/bin/python -c "import sys; sys.path.insert(0, 'bench'); from synthetic import \
make_pyramid; make_pyramid('.whl/cache/sf_bench_${SIZE:-10000}.tif', ${SIZE:-10000}, ${SIZE:-10000})"
    du -sh .whl
    ;;
  run)
    shift
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site SLIDEFLOW_TEST_SLIDES="$PWD/.whl/slides" \
      SLIDEFLOW_BENCH_CACHE="$PWD/.whl/cache"
    out="${OUT:-/tmp}/bench_gpu.txt"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out" 2>&1 || true
    python3 -u bench/bench_gpu.py "$@" 2>&1 | tee -a "$out"
    ;;
  *)
    echo "usage: bench/gpu_session.sh prepare | run [bench_gpu.py args]" >&2
    exit 2
    ;;
esac
