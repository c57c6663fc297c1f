"""On-disk formats: TFRecord tile stores, feature bags (.pt/.h5/.zarr) and atomic writes."""

from __future__ import annotations

from typing import Any

__all__ = ["TFRecord", "TFRecordWriter", "convert", "read_bag", "write_bag"]


def __getattr__(name: str) -> Any:  # lazy: h5py/zarr/torch load only when used
    if name in ("TFRecord", "TFRecordWriter"):
        from . import tfrecord

        return getattr(tfrecord, name)
    if name == "tensorflow":  # imports TensorFlow: only on explicit use
        import importlib

        return importlib.import_module(".tensorflow", __name__)
    if name in ("convert", "read_bag", "write_bag"):
        from . import bags

        return getattr(bags, name)
    raise AttributeError(name)
