"""A local cache for remote slides that must be opened as files (JPEG 2000 SVS, NDPI, DICOM
series stored as several objects, anything openslide reads): size-bounded, least recently used
entries evicted first, safe when several processes share it.

Where: `SLIDEFLOW_CACHE` (or `--cache DIR` on the command line), else
`~/.cache/slideflow/slides`. Size bound: `SLIDEFLOW_CACHE_SIZE` (bytes, or with a K/M/G/T
suffix; default 50G).

An entry is `<dir>/<key>/<file name>` (a folder of objects for a prefix; an MRXS file with its
companion folder beside it, `<key>/x.mrxs` and `<key>/x/...`) plus `<dir>/<key>.json` (URL,
bytes and ETag of each object), written last. A download goes to a temporary name in the
entry folder, is checked against the size announced when it started (and every ranged GET
against the ETag), and is moved into place with `os.replace`: a killed or failed download
leaves no entry, only a temporary file that the next download of that entry removes. An entry
is used only when its record matches the object's current size and ETag; otherwise it is
downloaded again. Downloads and evictions of one entry hold its lock (`slideflow.io.locks`), so
two processes never write one entry, and a process that finds it locked waits for the other
download and then uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..io.atomic import tmp_path_for, write_json_atomic
from ..io.locks import SlideLock, clean_stale_temps
from .fetch import FetchStats, RemoteObject
from .url import RemoteError, filesystem, join, safe_url, url_basename

#: bytes per ranged GET while downloading
CHUNK = 8 << 20
DEFAULT_SIZE = "50G"


def parse_size(text: str) -> int:
    """'50G', '512M', '1000000' -> bytes."""
    text = str(text).strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    try:
        value = float(text[:-1] if mult > 1 else text)
    except ValueError:
        raise ValueError(f"cache size {text!r}: bytes, or a number with K/M/G/T (e.g. 50G)") \
            from None
    if value <= 0:
        raise ValueError(f"cache size {text!r} must be positive")
    return int(value * mult)


def _touch(path: Path) -> None:
    """Mark an entry used now (nanoseconds set by us: the filesystem's own clock for file
    times can be a few milliseconds coarse, too coarse to order uses)."""
    t = time.time_ns()
    os.utime(path, ns=(t, t))


def default_dir() -> Path:
    env = os.environ.get("SLIDEFLOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slideflow" / "slides"


class SlideCache:
    """Remote slides downloaded once into `folder`, at most `max_bytes` in all."""

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int | str | None = None,
                 *, wait: float = 3600.0):
        self.folder = Path(folder) if folder is not None else default_dir()
        size = max_bytes if max_bytes is not None else os.environ.get("SLIDEFLOW_CACHE_SIZE",
                                                                      DEFAULT_SIZE)
        self.max_bytes = size if isinstance(size, int) else parse_size(size)
        self.wait = wait

    @staticmethod
    def key(url: str) -> str:
        return hashlib.sha256(safe_url(url).encode()).hexdigest()[:20]

    def cached(self, url: str, obj: RemoteObject) -> Path | None:
        """The cached copy of the object `obj` at `url` if it is current, else None."""
        key, dest = self.key(url), self._dest(url)
        objects = [(url_basename(url), obj), *companions(url, None, obj.stats)]
        if not self._current(key, self._want(objects), dest, objects):
            return None
        _touch(self.folder / f"{key}.json")
        return dest

    def _dest(self, url: str) -> Path:
        entry = self.folder / self.key(url)
        return entry / url_basename(url) if not url.endswith("/") else entry / "series"

    @staticmethod
    def _want(objects: list[tuple[str, RemoteObject]]) -> list[dict[str, Any]]:
        return [{"name": rel, "bytes": o.size, "etag": o.etag} for rel, o in objects]

    def fetch(self, url: str, *, anon: bool | None = None, stats: FetchStats | None = None,
              obj: RemoteObject | None = None) -> Path:
        """Local path of `url` (a file, or a folder for a prefix ending in '/'), downloaded
        unless a current copy is cached. `obj`: the object, when already opened."""
        stats = stats if stats is not None else FetchStats()
        objects = [(url_basename(url), obj), *companions(url, anon, stats)] \
            if obj is not None else self._objects(url, anon, stats)
        key = self.key(url)
        entry = self.folder / key
        dest = self._dest(url)
        want = self._want(objects)
        deadline = time.monotonic() + self.wait
        while True:
            if self._current(key, want, dest, objects):
                _touch(self.folder / f"{key}.json")
                return dest
            with SlideLock(self.folder, key) as lock:
                if lock.acquired:
                    if not self._current(key, want, dest, objects):
                        self._download(key, entry, dest, objects, want, url)
                        self.evict(keep=key)
                    _touch(self.folder / f"{key}.json")
                    return dest
            if time.monotonic() > deadline:
                raise RemoteError(f"{safe_url(url)}: the cache entry {entry} has been locked "
                                  f"by another process for {self.wait:.0f} s ({lock.holder()})")
            time.sleep(0.2)

    def _objects(self, url: str, anon: bool | None, stats: FetchStats
                 ) -> list[tuple[str, RemoteObject]]:
        if not url.endswith("/"):
            return [(url_basename(url), RemoteObject(url, anon=anon, stats=stats)),
                    *companions(url, anon, stats)]
        fs, path = filesystem(url, anon)
        names = sorted(p for p in fs.find(path) if not p.endswith("/"))
        if not names:
            raise FileNotFoundError(f"{safe_url(url)}: no objects under this prefix")
        base = path.rstrip("/") + "/"
        proto = url.split("://", 1)[0]
        return [(n[len(base):], RemoteObject(join(f"{proto}://{base.rstrip('/')}", n[len(base):]),
                                              anon=anon, stats=stats)) for n in names]

    def _current(self, key: str, want: list[dict[str, Any]], dest: Path,
                 objects: list[tuple[str, RemoteObject]]) -> bool:
        try:
            record = json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            return False
        if record.get("objects") != want:
            return False
        files = [_target(dest, rel) for rel, _ in objects]
        return all(f.is_file() and f.stat().st_size == w["bytes"] for f, w in zip(files, want))

    def _download(self, key: str, entry: Path, dest: Path,
                  objects: list[tuple[str, RemoteObject]], want: list[dict[str, Any]],
                  url: str) -> None:
        record = self.folder / f"{key}.json"
        record.unlink(missing_ok=True)  # the record goes first: no reader trusts a half entry
        entry.mkdir(parents=True, exist_ok=True)
        for p in clean_stale_temps(entry):
            p.unlink(missing_ok=True)
        for rel, obj in objects:
            target = _target(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_path_for(target)
            try:
                with open(tmp, "wb") as fh:
                    for a in range(0, obj.size, CHUNK):
                        fh.write(obj.get(a, min(a + CHUNK, obj.size)))
                    fh.flush()
                    os.fsync(fh.fileno())
                got = tmp.stat().st_size
                if got != obj.size:
                    raise RemoteError(f"{obj.name}: downloaded {got} bytes, expected {obj.size}")
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        write_json_atomic(record, {"url": safe_url(url), "objects": want})

    def entries(self) -> list[tuple[str, int, float]]:
        """(key, bytes, last use) of every complete entry."""
        out = []
        for rec in self.folder.glob("*.json"):
            try:
                data = json.loads(rec.read_text())
                size = sum(int(o["bytes"]) for o in data["objects"])
                out.append((rec.stem, size, rec.stat().st_mtime))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits; returns their keys.
        Entries locked by another process (being downloaded) are left alone."""
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        removed = []
        for key, size, _ in entries:
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            with SlideLock(self.folder, key) as lock:
                if not lock.acquired:
                    continue
                (self.folder / f"{key}.json").unlink(missing_ok=True)
                shutil.rmtree(self.folder / key, ignore_errors=True)
            total -= size
            removed.append(key)
        return removed


def _target(dest: Path, rel: str) -> Path:
    """Where object `rel` of an entry goes: inside the folder of a prefix ('series'), else
    beside the slide file (an MRXS file's companion folder sits next to it)."""
    return dest / rel if dest.name == "series" else dest.parent / rel


def companions(url: str, anon: bool | None, stats: FetchStats) -> list[tuple[str, RemoteObject]]:
    """The objects a slide file needs beside it: for `x.mrxs`, every object under `x/`
    (Slidedat.ini and the Data*.dat files), as ('x/<name>', object). None for other files."""
    if not url.lower().endswith(".mrxs"):
        return []
    folder = url[: -len(".mrxs")]
    fs, path = filesystem(folder, anon)
    fs.invalidate_cache(path)
    names = sorted(p for p in fs.find(path) if not p.endswith("/"))
    if not names:
        raise FileNotFoundError(f"{safe_url(url)}: its companion folder {safe_url(folder)}/ "
                                "holds no objects (an MRXS slide is the .mrxs file and that "
                                "folder, side by side)")
    stem = url_basename(folder)
    return [(f"{stem}/{n[len(path) + 1:]}", RemoteObject(join(folder, n[len(path) + 1:]),
                                                         anon=anon, stats=stats))
            for n in names]


__all__ = ["SlideCache", "companions", "default_dir", "parse_size"]
