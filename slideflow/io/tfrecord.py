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
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import crc32c
import numpy as np

from ..errors import TFRecordError
from ..slide.geometry import tile_um_label
from ..validate import positive_int
from . import imgcodec, protobuf
from .atomic import AtomicWriter, atomic_open, tmp_path_for

log = logging.getLogger(__name__)

SUFFIX = ".tfrecords"
INDEX_SUFFIX = ".index.npz"
FRAMING = 16  # 8 length + 4 length crc + 4 data crc
_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: byte-identical index files


def masked_crc(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked crc32c: rotate right by 15 bits, add a constant (mod 2**32)."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes | bytearray | memoryview) -> bytes:
    """One framed record: length, its masked crc, the data, the data's masked crc."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, _U32.pack(masked_crc(length)), data, _U32.pack(masked_crc(data))))


def index_path_for(path: str | os.PathLike) -> Path:
    """`<dir>/<slide>.index.npz` for `<dir>/<slide>.tfrecords` (Slideflow's naming)."""
    return Path(path).with_name(tfrecord_name(path) + INDEX_SUFFIX)


def tfrecord_name(path: str | os.PathLike) -> str:
    """Slide name of a TFRecord: its file name without the `.tfrecords` suffix."""
    name = Path(path).name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else Path(name).stem


def get_tfrecord_label(tile_px: int, tile_um: int | float | str) -> str:
    """Folder label for a tile geometry: '256px_302um' or '256px_20x' (see `tile_um_label`)."""
    return tile_um_label(tile_px, tile_um)


def _corrupt(path: Any, record: int, offset: int, why: str) -> TFRecordError:
    return TFRecordError(
        f"{path}: record {record} at byte offset {offset}: {why}. The file was left in place; "
        "re-extract tiles for this slide or remove it from the dataset."
    )


# --------------------------------------------------------------------------- index


class TFRecordIndex(NamedTuple):
    """Where each record is: `offsets` int64 (N, 2) [start, length incl. framing] and the tile
    centres `locations` int64 (N, 2), None when the records carry no loc_x/loc_y."""

    offsets: np.ndarray
    locations: np.ndarray | None

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.offsets.shape[0])


def _save_npz(fh: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """Same layout as `np.savez` (stored zip of .npy members) but with fixed timestamps."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)


def write_index(path: str | os.PathLike, index: TFRecordIndex) -> Path:
    """Write the index of the TFRecord at `path` atomically; returns the index path."""
    arrays = {"arr_0": np.asarray(index.offsets, np.int64).reshape(-1, 2)}
    if index.locations is not None:
        arrays["locations"] = np.asarray(index.locations, np.int64).reshape(-1, 2)
    dest = index_path_for(path)
    with atomic_open(dest, "wb") as fh:
        _save_npz(fh, arrays)
    return dest


def read_index(path: str | os.PathLike) -> TFRecordIndex:
    """Load the index of a TFRecord (pass the .tfrecords or the .index.npz path).

    Raises FileNotFoundError when there is none and TFRecordError when it is unreadable.
    """
    ipath = Path(path) if str(path).endswith(".npz") else index_path_for(path)
    if not ipath.exists():
        raise FileNotFoundError(f"{ipath}: no TFRecord index")
    try:
        with np.load(ipath, allow_pickle=False) as z:
            offsets = np.asarray(z["arr_0"])
            locations = np.asarray(z["locations"]) if "locations" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise TFRecordError(f"{ipath}: unreadable TFRecord index ({e})") from None
    if offsets.size == 0:  # Slideflow writes empty lists for empty TFRecords
        offsets = offsets.reshape(0, 2)
        locations = None if locations is None else locations.reshape(0, 2)
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise TFRecordError(f"{ipath}: arr_0 has shape {offsets.shape}, expected (N, 2)")
    if locations is not None and locations.shape != offsets.shape:
        raise TFRecordError(f"{ipath}: locations has shape {locations.shape}, "
                            f"expected {offsets.shape}")
    return TFRecordIndex(offsets.astype(np.int64, copy=False),
                         None if locations is None else locations.astype(np.int64, copy=False))


def _index_matches(path: Path, index: TFRecordIndex, fd: int) -> bool:
    """Cheap staleness check: records tile the file exactly and the end headers agree."""
    size = os.fstat(fd).st_size
    off = index.offsets
    if len(off) == 0:
        return size == 0
    starts, lengths = off[:, 0], off[:, 1]
    if starts[0] != 0 or (lengths < FRAMING).any() or starts[-1] + lengths[-1] != size:
        return False
    if not np.array_equal(starts[1:], starts[:-1] + lengths[:-1]):
        return False
    for i in {0, len(off) - 1}:
        head = os.pread(fd, 8, int(starts[i]))
        if len(head) != 8 or struct.unpack("<Q", head)[0] != lengths[i] - FRAMING:
            return False
    return True


def _scan(path: Path, verify: bool = True) -> Iterator[tuple[int, int, int, bytes]]:
    """(record number, offset, record length, data) in file order, checksums verified."""
    with open(path, "rb", buffering=1 << 20) as fh:
        size = os.fstat(fh.fileno()).st_size
        offset = i = 0
        while True:
            head = fh.read(12)
            if not head:
                return
            if len(head) < 12:
                raise _corrupt(path, i, offset, f"truncated: {len(head)} of 12 header bytes")
            length, length_crc = _HEADER.unpack(head)
            if verify and masked_crc(head[:8]) != length_crc:
                raise _corrupt(path, i, offset, "length checksum mismatch (corrupt header)")
            if offset + FRAMING + length > size:
                raise _corrupt(path, i, offset, f"truncated: the record needs "
                               f"{FRAMING + length} bytes, {size - offset} remain")
            data = fh.read(length)
            tail = fh.read(4)
            if len(data) != length or len(tail) != 4:
                raise _corrupt(path, i, offset, "truncated while reading")
            if verify and masked_crc(data) != _U32.unpack(tail)[0]:
                raise _corrupt(path, i, offset, "data checksum mismatch (corrupt record)")
            yield i, offset, FRAMING + length, data
            offset += FRAMING + length
            i += 1


def _parse(data: bytes | memoryview, path: Any, i: int, offset: int) -> dict[str, Any]:
    """Example bytes -> {'image_raw': bytes, 'slide': str, 'loc_x': int, 'loc_y': int, ...}.

    Single-valued features become scalars, others stay lists (extra features included).
    """
    try:
        features = protobuf.decode_example(data)
    except protobuf.ProtobufError as e:
        raise _corrupt(path, i, offset, f"not a tf.train.Example ({e})") from None
    rec: dict[str, Any] = {}
    for key, (_, values) in features.items():
        rec[key] = values[0] if len(values) == 1 else values
    slide = rec.get("slide")
    if isinstance(slide, bytes):
        rec["slide"] = slide.decode("utf-8", errors="replace")
    return rec


def build_index(path: str | os.PathLike, *, write: bool = True) -> TFRecordIndex:
    """Scan a TFRecord (checksums verified) and (re)write its index atomically.

    A folder that cannot be written (read-only share) only costs a warning: the index is
    still returned.
    """
    path = Path(path)
    offsets, locs, has_locs = [], [], True
    for i, offset, length, data in _scan(path):
        offsets.append((offset, length))
        if has_locs:
            rec = _parse(data, path, i, offset)
            if isinstance(rec.get("loc_x"), int) and isinstance(rec.get("loc_y"), int):
                locs.append((rec["loc_x"], rec["loc_y"]))
            else:
                has_locs = False
    index = TFRecordIndex(np.array(offsets, np.int64).reshape(-1, 2),
                          np.array(locs, np.int64).reshape(-1, 2) if has_locs else None)
    if write:
        try:
            write_index(path, index)
        except OSError as e:
            log.warning("%s: cannot write the rebuilt index (%s); using it in memory",
                        index_path_for(path), e)
    return index


def verify(path: str | os.PathLike) -> int:
    """Check every checksum and record of a TFRecord; returns the record count."""
    n = 0
    for i, offset, _, data in _scan(Path(path)):
        _parse(data, path, i, offset)
        n += 1
    return n


# --------------------------------------------------------------------------- writing


class TFRecordWriter(AtomicWriter):
    """Write tiles to `<slide>.tfrecords` under a temporary name; renamed on a clean close.

    Use as a context manager: on an exception the temporary file is removed and any existing
    file at `path` is left untouched. The index is written after the rename.
    """

    def __init__(self, path: str | os.PathLike, *, write_index: bool = True):
        self.path = Path(path)
        self.with_index = write_index
        self._tmp = tmp_path_for(self.path)
        self._fh = open(self._tmp, "wb", buffering=1 << 20)  # closed in close()/abort()
        self._offsets: list[tuple[int, int]] = []
        self._locs: list[tuple[int, int]] = []
        self._has_locs = True
        self._pos = 0
        self._done = False

    def __len__(self) -> int:
        return len(self._offsets)

    def write(self, image_bytes: bytes, slide: str, loc_x: int, loc_y: int, *,
              extra: Mapping[str, protobuf.FeatureLike] | None = None) -> None:
        """Append one tile: encoded image bytes, slide name, tile centre (level-0 px)."""
        if not isinstance(image_bytes, (bytes, bytearray, memoryview)):
            raise TypeError(f"image_bytes must be bytes (encode tiles with imgcodec.encode), "
                            f"got {type(image_bytes).__name__}")
        features: dict[str, Any] = {"image_raw": image_bytes, "slide": str(slide),
                                    "loc_x": int(loc_x), "loc_y": int(loc_y)}
        if extra:
            clash = set(extra) & set(features)
            if clash:
                raise ValueError(f"extra features may not replace {sorted(clash)}")
            features.update(extra)
        self.write_example(protobuf.encode_example(features), (int(loc_x), int(loc_y)))

    def write_example(self, example: bytes, location: tuple[int, int] | None = None) -> None:
        """Append an already serialized tf.train.Example (`location` goes to the index)."""
        if self._done:
            raise TFRecordError(f"{self.path}: writer is closed")
        length = struct.pack("<Q", len(example))
        self._fh.write(length + _U32.pack(masked_crc(length)))
        self._fh.write(example)  # not concatenated: saves a copy of the image bytes
        self._fh.write(_U32.pack(masked_crc(example)))
        size = FRAMING + len(example)
        self._offsets.append((self._pos, size))
        self._pos += size
        if location is None:
            self._has_locs = False
        else:
            self._locs.append((int(location[0]), int(location[1])))

    @property
    def index(self) -> TFRecordIndex:
        return TFRecordIndex(np.array(self._offsets, np.int64).reshape(-1, 2),
                             np.array(self._locs, np.int64).reshape(-1, 2)
                             if self._has_locs else None)

    def close(self) -> None:
        """Finish: fsync, drop the old index, rename into place, then write the index."""
        if self._done:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._done = True
        index_path_for(self.path).unlink(missing_ok=True)  # it describes the file we replace
        os.replace(self._tmp, self.path)
        if self.with_index:
            write_index(self.path, self.index)

    def abort(self) -> None:
        """Discard everything written; an existing file at `path` is not touched."""
        if self._done:
            return
        self._done = True
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    @property
    def finished(self) -> bool:
        return self._done


def write_records(path: str | os.PathLike, records: Iterable[Any], *,
                  write_index: bool = True) -> int:
    """Write (image_bytes, slide, loc_x, loc_y) tuples or dicts with those keys (dict keys
    beyond them are stored as extra features); returns the number of records."""
    with TFRecordWriter(path, write_index=write_index) as writer:
        for rec in records:
            if isinstance(rec, Mapping):
                extra = {k: v for k, v in rec.items()
                         if k not in ("image_raw", "slide", "loc_x", "loc_y")}
                writer.write(rec["image_raw"], rec["slide"], rec["loc_x"], rec["loc_y"],
                             extra=extra or None)
            else:
                writer.write(*rec)
        return len(writer)


# --------------------------------------------------------------------------- reading


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
            if _index_matches(self.path, index, self._fileno()):
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
            raise _corrupt(self.path, i, offset, f"truncated: {len(buf)} of {length} bytes; "
                           f"the file changed since {index_path_for(self.path).name} was built")
        size, length_crc = _HEADER.unpack_from(buf)
        if size != length - FRAMING:
            raise _corrupt(self.path, i, offset, f"length field says {size} bytes, the index "
                           f"{length - FRAMING}; rebuild the index with build_index()")
        data = memoryview(buf)[12:-4]
        if self.verify:
            if masked_crc(buf[:8]) != length_crc:
                raise _corrupt(self.path, i, offset, "length checksum mismatch (corrupt header)")
            if masked_crc(data) != _U32.unpack_from(buf, length - 4)[0]:
                raise _corrupt(self.path, i, offset, "data checksum mismatch (corrupt record)")
        return bytes(data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Record `i` as {'image_raw': bytes, 'slide': str, 'loc_x': int, 'loc_y': int, ...}."""
        data = self.read_record(i)
        i = int(i) % len(self)
        return _parse(data, self.path, i, int(self.index.offsets[i, 0]))

    def image(self, i: int) -> np.ndarray:
        """Decoded tile `i`, uint8 (H, W, 3) RGB."""
        rec = self[i]
        try:
            return imgcodec.decode(rec["image_raw"])
        except (KeyError, ValueError) as e:
            i = int(i) % len(self)
            raise _corrupt(self.path, i, int(self.index.offsets[i, 0]),
                           f"image_raw cannot be decoded ({e!r})") from None

    # -- sequential
    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Records in file order, checksums verified (does not need the index)."""
        for i, offset, _, data in _scan(self.path):
            yield _parse(data, self.path, i, offset)

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
            for i, offset, _, data in _scan(self.path):
                chunk.append((i, offset, _parse(data, self.path, i, offset)))
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
                locs[j] = rec["loc_x"], rec["loc_y"]
            except (KeyError, TypeError) as e:
                raise _corrupt(self.path, i, offset,
                               f"not a tile record (missing or bad {e})") from None
        try:
            h, w = imgcodec.image_shape(raws[0])
        except ValueError as e:
            raise _corrupt(self.path, chunk[0][0], chunk[0][1],
                           f"image_raw cannot be decoded ({e})") from None
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
                raise _corrupt(self.path, i, offset,
                               f"image_raw cannot be decoded ({e})") from None
        return out, locs
