"""Tile extraction: slides -> `<label>/<slide>.tfrecords` + `.index.npz` + `.extract.json`.

Extraction is the engine (`slideflow.pipeline.run`) with a slide-reader source and a TFRecord
sink and no model. This package holds what is specific to it, one job per module:

    sidecar.py    options -> request, the `.extract.json` resume contract, leftovers
    writer.py     the TFRecord sink (encode pool, ordered writes, shuffle staging, loose tiles)
    job.py        one slide: open with the tile selection, run the engine, sidecar last
    results.py    ExtractionSummary (per-slide outcomes: `engine.outcome.SlideOutcome`)
    scheduler.py  many slides in flight, interrupts, each folder's report and summary (`Dataset.extract_tiles` makes the jobs)
"""

from .job import extract_job, extract_slide
from .results import ExtractionSummary, SlideResult
from .scheduler import run_jobs, write_run_outputs
from .sidecar import (
    FORMAT_VERSION,
    SIDECAR_SUFFIX,
    ExtractJob,
    ExtractOptions,
    check_existing,
    is_incomplete,
    read_sidecar,
    sidecar_path,
)
from .writer import Stopped, TFRecordSink

__all__ = [
    "FORMAT_VERSION", "SIDECAR_SUFFIX", "ExtractJob", "ExtractOptions", "ExtractionSummary",
    "SlideResult", "Stopped", "TFRecordSink", "check_existing", "extract_job",
    "extract_slide", "is_incomplete", "read_sidecar", "run_jobs", "sidecar_path",
    "write_run_outputs",
]
