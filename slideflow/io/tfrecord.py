"""TFRecord tile stores, byte-compatible with Slideflow 3 (which writes them with TensorFlow).

One file per slide, `<label>/<slide>.tfrecords`, with its index `<slide>.index.npz` beside it.

    record  = uint64 LE length | uint32 masked crc32c(length bytes) | data | uint32 masked crc32c(data)
    data    = tf.train.Example {image_raw: bytes (JPEG/PNG), slide: bytes (utf-8),
                                loc_x: int64, loc_y: int64}   # tile centre, level-0 px
    index   = npz (stored, not compressed): arr_0 = int64 (N, 2) [record start, record length
              including the 16 framing bytes], locations = int64 (N, 2) (loc_x, loc_y)

Writes go to a temporary name and are renamed when complete; the index (metadata) is written
after the TFRecord is in place, so a crash never leaves a file that looks finished. Readers
verify checksums, raise `TFRecordError` naming the file, the record and its byte offset, rebuild
a missing or stale index, and never delete anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TFRecordError
from ..units import tile_um_label
from ..validate import positive_int
from . import imgcodec
from .identity import SIDECAR_SUFFIX, _beside
from .npz import INDEX_SUFFIX, index_path_for
from .tfrecord_codec import (
    FRAMING,
    HEADER,
    SUFFIX,
    U32,
    corrupt_error,
    frame,
    masked_crc,
    parse_example,
    scan_records,
    tfrecord_name,
)
from .tfrecord_index import (
    TFRecordIndex,
    build_index,
    index_matches,
    read_index,
    verify,
    write_index,
)
from .tfrecord_writer import TFRecordWriter, write_records

log = logging.getLogger(__name__)

__all__ = ["FRAMING", "INDEX_SUFFIX", "SUFFIX", "TFRecord", "TFRecordIndex", "TFRecordWriter",
           "build_index", "frame", "get_tfrecord_label", "index_path_for", "masked_crc",
           "read_index", "tfrecord_name", "verify", "write_index", "write_records"]


def get_tfrecord_label(tile_px: int, tile_um: int | float | str) -> str:
    """Folder label for a tile geometry: '256px_302um' or '256px_20x' (see `tile_um_label`)."""
    return tile_um_label(tile_px, tile_um)


class TFRecord:
    """Read one TFRecord: `len`, random access `tfr[i]`, file-order iteration, batches.

    The index is loaded on first use and rebuilt (by scanning) when missing or stale. Sequential
    reads always verify checksums; random access does with `verify=True`.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise TFRecordError(f"{self.path}: no such TFRecord file")
        self.name = tfrecord_name(self.path)
        self.verify = verify
        self._index: TFRecordIndex | None = None
        self._fd: int | None = None
        self._pid: int | None = None
        self._slide: str | None = None

    def __repr__(self) -> str:
        return f"TFRecord({str(self.path)!r})"

    # -- file handle: one per process (DataLoader workers fork), pread is thread-safe
    def _fileno(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> TFRecord:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": None}

    # -- index
    @property
    def index(self) -> TFRecordIndex:
        if self._index is None:
            self._index = self._load_index()
        return self._index

    def _load_index(self) -> TFRecordIndex:
        try:
            index = read_index(self.path)
            if index_matches(self.path, index, self._fileno()):
                return index
            why = "does not match the file (stale)"
        except FileNotFoundError:
            why = "is missing"
        except TFRecordError as e:
            why = f"is unreadable ({e})"
        log.info("%s: index %s; rebuilding it from %s", index_path_for(self.path), why,
                 self.path.name)
        return build_index(self.path)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def locations(self) -> np.ndarray:
        """Tile centres (N, 2) int64, level-0 px, in record order."""
        if self.index.locations is None:
            self._index = build_index(self.path)  # an old index may lack them
            if self._index.locations is None:
                raise TFRecordError(f"{self.path}: records carry no loc_x/loc_y")
        return self.index.locations  # type: ignore[return-value]

    @property
    def slide(self) -> str:
        """Slide name stored in the records (the file name for an empty TFRecord)."""
        if self._slide is None:
            slide = self[0].get("slide") if len(self) else None
            self._slide = slide if isinstance(slide, str) else self.name
        return self._slide

    # -- random access
    def read_record(self, i: int) -> bytes:
        """Serialized Example of record `i` (checksums verified if `verify`)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for {self.path} ({n} records)")
        i = int(i) % n
        offset, length = (int(v) for v in self.index.offsets[i])
        buf = os.pread(self._fileno(), length, offset)
        if len(buf) != length:
            raise corrupt_error(self.path, i, offset, f"truncated: {len(buf)} of {length} bytes; "
                           f"the file changed since {index_path_for(self.path).name} was built")
        size, length_crc = HEADER.unpack_from(buf)
        if size != length - FRAMING:
            raise corrupt_error(self.path, i, offset, f"length field says {size} bytes, the index "
                           f"{length - FRAMING}; rebuild the index with build_index()")
        data = memoryview(buf)[12:-4]
        if self.verify:
            if masked_crc(buf[:8]) != length_crc:
                raise corrupt_error(self.path, i, offset, "length checksum mismatch (corrupt header)")
            if masked_crc(data) != U32.unpack_from(buf, length - 4)[0]:
                raise corrupt_error(self.path, i, offset, "data checksum mismatch (corrupt record)")
        return bytes(data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Record `i` as {'image_raw': bytes, 'slide': str, 'loc_x': int, 'loc_y': int, ...}."""
        data = self.read_record(i)
        i = int(i) % len(self)
        return parse_example(data, self.path, i, int(self.index.offsets[i, 0]))

    def image(self, i: int) -> np.ndarray:
        """Decoded tile `i`, uint8 (H, W, 3) RGB."""
        rec = self[i]
        try:
            return imgcodec.decode(rec["image_raw"])
        except (KeyError, ValueError) as e:
            i = int(i) % len(self)
            raise corrupt_error(self.path, i, int(self.index.offsets[i, 0]),
                           f"image_raw cannot be decoded ({e!r})") from None

    # -- sequential
    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Records in file order, checksums verified (does not need the index)."""
        for i, offset, _, data in scan_records(self.path):
            yield parse_example(data, self.path, i, offset)

    def iter_batches(self, batch_size: int = 64, num_threads: int | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 (B, H, W, 3) tiles, int64 (B, 2) centres) in file order.

        Decoding runs in a thread pool (the codecs release the GIL) while the next batch is
        read, so reading and decoding overlap.
        """
        batch_size = positive_int(batch_size, "batch_size")
        threads = num_threads if num_threads else imgcodec.default_threads()
        with ThreadPoolExecutor(threads, thread_name_prefix="sf-tfr-decode") as pool:
            pending = None
            chunk: list[tuple[int, int, dict[str, Any]]] = []
            for i, offset, _, data in scan_records(self.path):
                chunk.append((i, offset, parse_example(data, self.path, i, offset)))
                if len(chunk) == batch_size:
                    job = self._submit(pool, chunk)
                    if pending is not None:
                        yield self._collect(pending)
                    pending, chunk = job, []
            job = self._submit(pool, chunk) if chunk else None
            if pending is not None:
                yield self._collect(pending)
            if job is not None:
                yield self._collect(job)

    def _submit(self, pool: ThreadPoolExecutor, chunk: list[tuple[int, int, dict[str, Any]]]):
        locs = np.empty((len(chunk), 2), np.int64)
        raws = []
        for j, (i, offset, rec) in enumerate(chunk):
            try:
                raws.append(rec["image_raw"])
                locs[j] = _int_loc(rec, "loc_x"), _int_loc(rec, "loc_y")
            except (KeyError, TypeError) as e:
                raise corrupt_error(self.path, i, offset,
                               f"not a tile record (missing or bad {e})") from None
        for j, (i, offset, _) in enumerate(chunk):  # sizes checked before anything decodes
            try:
                shape = imgcodec.image_shape(raws[j])
            except ValueError as e:
                raise corrupt_error(self.path, i, offset,
                                    f"image_raw cannot be decoded ({e})") from None
            if j == 0:
                h, w = shape
            elif shape != (h, w):
                raise corrupt_error(self.path, i, offset, f"tile is {shape[1]}x{shape[0]} px, "
                                    f"the others {w}x{h}")
        out = np.empty((len(chunk), h, w, 3), np.uint8)
        futures = [pool.submit(imgcodec.decode, raw, out[j]) for j, raw in enumerate(raws)]
        return out, locs, futures, chunk

    def _collect(self, job: tuple[np.ndarray, np.ndarray, list[Future], list]
                 ) -> tuple[np.ndarray, np.ndarray]:
        out, locs, futures, chunk = job
        for f, (i, offset, _) in zip(futures, chunk):
            try:
                f.result()
            except ValueError as e:
                raise corrupt_error(self.path, i, offset,
                               f"image_raw cannot be decoded ({e})") from None
        return out, locs


def _int_loc(rec: dict[str, Any], key: str) -> int:
    """A tile location: an int64 feature (bytes or floats are refused, not coerced)."""
    value = rec[key]
    if isinstance(value, (bytes, str, float, bool)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{key} is {type(value).__name__}, expected an int64 feature")
    return int(value)


def check_tile_size(batches: Any, path: Any) -> Iterator[tuple[Any, Any]]:
    """`batches` of one TFRecord (numpy or torch, (B, H, W, 3)), each checked to hold tiles of
    one size: the `tile_px` of its extraction sidecar when there is one, else the first
    batch's. A file whose tiles change size part-way fails naming the records."""
    import json


    want, said = None, "the first records are"
    try:
        px = json.loads(_beside(Path(path), SIDECAR_SUFFIX).read_text()).get("tile_px")
        if isinstance(px, int) and px > 0:
            want, said = (px, px), f"its {SIDECAR_SUFFIX} says"
    except (OSError, ValueError, AttributeError):
        pass
    n = 0
    for tiles, locs in batches:
        got = (int(tiles.shape[1]), int(tiles.shape[2]))
        if want is None:
            want = got
        elif got != want:
            raise TFRecordError(f"{path}: records {n}..{n + len(tiles) - 1} hold {got[1]}x"
                                f"{got[0]} px tiles, {said} {want[1]}x{want[0]}; re-extract "
                                "the tiles")
        n += len(tiles)
        yield tiles, locs
