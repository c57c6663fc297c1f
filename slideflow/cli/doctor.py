"""`slideflow doctor [COMMAND]`: what this machine can do, on one screen.

Slide readers and their versions, torch with CUDA/cuDNN, GPU JPEG decode and its colour
self-check (nvJPEG against libjpeg-turbo on a test image), TensorFlow, Ray, the Hugging Face
token (present or not, never shown), cache and offline mode, which extractors' weights are
here, and the free disk in the output folder. With COMMAND (`features`, `extract-tiles`, ...)
it exits 1 when something that command needs is missing, naming it and the fix.
Versions are read from package metadata: nothing heavy (TensorFlow, Ray) is imported.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ..model.extractors.weights_status import hub_cache_dir
from ..slide.decode import TorchDecoder
from ..slide.decode_check import check_decoder
from ..version import __version__
from .extractors import extractor_rows

#: what each command needs: "reader" (one slide reader), "torch", or a distribution name
NEEDS: dict[str, tuple[str, ...]] = {
    "info": ("reader",), "preview": ("reader",), "extract-tiles": ("reader",),
    "features": ("reader", "torch"), "encode-slide": ("reader", "torch"),
    "encode-patient": ("reader", "torch"), "demo": ("reader", "torch"),
    "tensorflow": ("tensorflow",), "ray": ("ray",),
}
FIX = {"reader": "pip install openslide-python openslide-bin (or tiffslide)",
       "torch": "pip install 'slideflow[torch]'", "tensorflow": "pip install 'slideflow[tf]'",
       "ray": "pip install 'slideflow[ray]'"}
READERS = (("openslide", "openslide-python", "openslide"), ("tiffslide", "tiffslide", "tiffslide"),
           ("wsidicom", "wsidicom", "wsidicom"), ("libvips", "pyvips", "pyvips"),
           ("cucim", "cucim-cu13", "cucim"))


@dataclass
class Line:
    label: str
    value: str


def version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def readers() -> dict[str, str | None]:
    """{reader: version or None}; openslide also names its C library."""
    out: dict[str, str | None] = {}
    for name, dist, module in READERS:
        v = version(dist) if importlib.util.find_spec(module) else None
        if v and name == "openslide":
            try:
                import openslide

                v = f"{v} (library {openslide.__library_version__})"
            except Exception as exc:  # noqa: BLE001 - the library itself fails to load
                v = None
                out["openslide (broken)"] = f"{type(exc).__name__}: {exc}"
        out[name] = v
    return out


def torch_lines() -> tuple[list[Line], bool]:
    """torch, CUDA, cuDNN, GPU and the GPU JPEG decode self-check; (lines, torch present)."""
    if importlib.util.find_spec("torch") is None:
        return [Line("torch", "not installed (" + FIX["torch"] + ")")], False
    import torch

    lines = [Line("torch", f"{torch.__version__} (threads {torch.get_num_threads()})")]
    if not torch.cuda.is_available():
        lines.append(Line("GPU", "no GPU (CUDA not available): models and decoding run on the "
                          "CPU"))
        return lines, True
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    lines.append(Line("CUDA", f"{torch.version.cuda}, cuDNN {cudnn}; {names}"))
    lines.append(Line("GPU decode", gpu_decode_check()))
    return lines, True


def gpu_decode_check(device: str = "cuda") -> str:
    """The decoders' colour self-check (`slide.decode_check`): torchvision on `device` (nvJPEG
    on CUDA) against libjpeg-turbo, on a coloured 64-px JPEG."""
    import numpy as np
    import simplejpeg

    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    jpeg = simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=100, colorsubsampling="444")
    try:
        decoder = TorchDecoder(device)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the doctor
        return f"unavailable ({type(exc).__name__}: {exc})"
    verdict = check_decoder(jpeg, decoder, "slideflow doctor test image")
    return (f"torchvision on {device} available; colour self-check "
            f"{'passes' if verdict.ok else 'FAILS'} ({verdict.describe()})")


def hf_lines() -> list[Line]:

    token_file = Path(os.environ.get("HF_TOKEN_PATH") or (
        Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "token"))
    token = "set (HF_TOKEN)" if os.environ.get("HF_TOKEN") else \
        f"stored ({token_file})" if token_file.is_file() else "none (gated models need one)"
    offline = (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in ("1", "true", "yes",
                                                                               "on")
    return [Line("HF token", token),
            Line("HF cache", f"{hub_cache_dir()}; offline mode "
                 f"{'on (HF_HUB_OFFLINE)' if offline else 'off'}")]


def weights_line() -> Line:
    rows = extractor_rows()
    here = [r["name"] for r in rows if r["weights"] in ("embedded", "cached")]
    missing = sum(r["weights"] == "needs download" for r in rows)
    shown = ", ".join(here[:6]) + (f" and {len(here) - 6} more" if len(here) > 6 else "")
    return Line("weights here", f"{len(here)} of {len(rows)} extractors ({shown or 'none'}); "
                f"{missing} need a download (see `slideflow extractors`)")


def disk_line(outdir: Path) -> Line:
    probe = outdir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    return Line("free disk", f"{free:.1f} GiB in {probe.resolve()}")


def doctor(
    command: Annotated[str | None, typer.Argument(
        help=f"exit 1 if something it needs is missing: {', '.join(NEEDS)}")] = None,
    extractor: Annotated[str | None, typer.Option("-e", "--extractor",
                                                  help="also check this extractor's weights")
                         ] = None,
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="where outputs would go")
                      ] = Path("."),
) -> None:
    """What this machine can do (readers, torch/CUDA, GPU decode, TensorFlow, Ray, Hugging
    Face, weights, disk); with COMMAND, exit 1 when something it needs is missing."""
    if command is not None and command not in NEEDS:
        raise typer.BadParameter(f"unknown command {command!r}; one of {', '.join(NEEDS)}")
    found = readers()
    lines = [Line("slideflow", f"{__version__} (python {os.sys.version.split()[0]})")]
    lines += [Line(f"reader {k}", v or "not installed") for k, v in found.items()]
    t_lines, has_torch = torch_lines()
    lines += t_lines
    lines.append(Line("TensorFlow", version("tensorflow-cpu") or version("tensorflow")
                      or "not installed (optional: " + FIX["tensorflow"] + ")"))
    lines.append(Line("Ray", version("ray") or "not installed (optional: " + FIX["ray"] + ")"))
    lines += hf_lines()
    lines.append(weights_line())
    lines.append(disk_line(outdir))
    missing = _missing(command, found, has_torch, extractor)
    if extractor is not None:
        lines.append(Line(f"extractor {extractor}", _extractor_status(extractor)))
    width = max(len(ln.label) for ln in lines) + 2
    for ln in lines:  # one screen: values wrap under themselves within 80 columns
        typer.echo(textwrap.fill(ln.value, 80, initial_indent=f"{ln.label:<{width}}",
                                 subsequent_indent=" " * width, break_on_hyphens=False))
    if command is not None:
        if missing:
            for what, fix in missing:
                typer.echo(f"missing for `slideflow {command}`: {what} ({fix})", err=True)
            raise typer.Exit(1)
        typer.echo(f"ready for `slideflow {command}`")


def _extractor_status(name: str) -> str:
    for r in extractor_rows():
        if r["name"] == name:
            return r["weights"] if r["installed"] else f"not installed ({r['install']})"
    return "unknown extractor (slideflow extractors lists them)"


def _missing(command: str | None, found: dict[str, str | None], has_torch: bool,
             extractor: str | None) -> list[tuple[str, str]]:
    out = []
    for need in NEEDS.get(command or "", ()):
        if need == "reader" and not any(found.get(r) for r in ("openslide", "tiffslide")):
            out.append(("a slide reader", FIX["reader"]))
        elif need == "torch" and not has_torch:
            out.append(("torch", FIX["torch"]))
        elif need in ("tensorflow", "ray") and not (version(need) or version(f"{need}-cpu")):
            out.append((need, FIX[need]))
    if extractor is not None and command is not None:
        status = _extractor_status(extractor)
        if status not in ("embedded", "cached", "local"):
            out.append((f"weights of {extractor} ({status})",
                        "download them once with network access, or pass --weights"))
    return out


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
