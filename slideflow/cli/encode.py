"""CLI commands for slide and patient embeddings, registered onto the main typer app.

    slideflow encode-slide SLIDES... -o OUT --slide-encoder titan[,feather] [-e conch_v15]
    slideflow encode-patient MANIFEST.csv -o OUT [--slide-encoder mean -e EXTRACTOR]

encode-slide makes (or reuses) tile bags in ``OUT/tile_bags/<extractor>`` once and runs every
requested slide encoder on them; encoders whose tile needs differ are refused before any work.
Outputs: ``OUT/<encoder>/<slide>.pt`` (``--format h5``: ``OUT/<slide>.h5`` holding
``slide_features/<encoder>`` for all of them) plus ``slide_embeddings.json``.
encode-patient writes ``OUT/<patient_id>.pt`` (mean of the patient's slide embeddings) and
``OUT/patients.json`` (patients in manifest order, their slides, the encoder config).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..engine.embed import PreprocessingConfig, embed_patients
from ..engine.features import jobs_from_paths
from ..engine.slide_embedding_outputs import canonical_extractor
from ..engine.slide_embeddings import generate_slide_embeddings
from ..io import formats
from ..io.atomic import atomic_path, write_json_atomic
from ..io.manifest import read_manifest
from ..model.slide_encoders import build_slide_encoder, get_slide_spec
from ..slide import expand_slides
from ..slide.geometry import TileGeometry
from .errors import check_inputs_exist


def _tile_um(tile_px: int | None, value: str | None) -> float | str | None:
    """--tile-um's value, checked once (`TileGeometry`): microns or a magnification."""
    if value is None:
        return None
    return TileGeometry.from_text(tile_px or 1, value).tile_um


def plan_encoders(names: list[str], tile_extractor: str | None, pretrained: bool = True,
                  weights: str | None = None) -> tuple[list[Any], str]:
    """Build the encoders and the one tile extractor they share (clear error otherwise)."""
    specs = [get_slide_spec(n) for n in names]
    needs = {canonical_extractor(s.tile_extractor) for s in specs if s.tile_extractor}
    if tile_extractor is not None:
        needs.add(canonical_extractor(tile_extractor))
    geos = {(s.tile_px, str(s.tile_um)) for s in specs if s.tile_px is not None}
    if len(needs) > 1 or len(geos) > 1:
        detail = ", ".join(f"{s.name}: {s.tile_extractor or 'any'} @ "
                           f"{s.tile_px or 'any'}px/{s.tile_um or 'any'}" for s in specs)
        raise typer.BadParameter(f"these slide encoders need different tiles ({detail}"
                                 f"{'; -e ' + tile_extractor if tile_extractor else ''}); run "
                                 "them in separate commands")
    if not needs:
        raise typer.BadParameter("no slide encoder names its tile extractor: pass -e NAME")
    if weights is not None and len(specs) > 1:
        raise typer.BadParameter("--weights applies to one slide encoder")
    encoders = [build_slide_encoder(s.name, weights=weights, pretrained=pretrained)
                for s in specs]
    name = tile_extractor or next(s.tile_extractor for s in specs if s.tile_extractor)
    return encoders, name


def encode_slide(
    slides: Annotated[list[Path], typer.Argument(help="slide files, DICOM folders or folders")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir")],
    slide_encoder: Annotated[str, typer.Option("--slide-encoder", "-s",
                                               help="NAME[,NAME...]")],
    extractor: Annotated[str | None, typer.Option("-e", "--extractor",
                                                  help="tile extractor")] = None,
    tile_px: Annotated[int | None, typer.Option()] = None,
    tile_um: Annotated[str | None, typer.Option()] = None,
    fmt: Annotated[str, typer.Option("--format", help=formats.choices_text(
        formats.SLIDE_EMBEDDINGS))] = "pt",
    qc: Annotated[str | None, typer.Option(help="otsu, blur, both or none")] = "otsu",
    mpp: Annotated[float | None, typer.Option()] = None,
    weights: Annotated[str | None, typer.Option(help="slide-encoder weights")] = None,
    random_weights: Annotated[bool, typer.Option(help="random slide-encoder weights "
                                                 "(testing only)")] = False,
    overwrite: Annotated[bool, typer.Option()] = False,
) -> None:
    """Slide embeddings straight from slides (tile bags are made or reused on the way)."""
    if fmt not in formats.names(formats.SLIDE_EMBEDDINGS):
        raise typer.BadParameter(f"--format must be "
                                 f"{formats.choices_text(formats.SLIDE_EMBEDDINGS)}, got {fmt!r}")
    check_inputs_exist(slides)  # before any model is built
    names = [n.strip() for n in slide_encoder.split(",") if n.strip()]
    encoders, tile_name = plan_encoders(names, extractor, not random_weights, weights)
    paths = expand_slides(slides)
    jobs = jobs_from_paths(paths, mpp=mpp)
    bags = outdir / "tile_bags" / tile_name
    geo = next(((e.spec.tile_px, e.spec.tile_um) for e in encoders if e.spec.tile_px), None)
    px = tile_px if tile_px is not None else (geo[0] if geo else None)
    um = _tile_um(tile_px, tile_um) if tile_um is not None else (geo[1] if geo else None)
    if px is None or um is None:
        raise typer.BadParameter("these slide encoders take any tile geometry: pass --tile-px "
                                 "and --tile-um")
    failed = 0
    for enc in encoders:
        dest = outdir if fmt == "h5" else outdir / enc.name
        report = generate_slide_embeddings(
            [j.slide_path for j in jobs], enc, dest, format=fmt, overwrite=overwrite,
            bags_dir=bags, tile_extractor=tile_name, tile_px=px, tile_um=um, qc=None if qc in (None, "none") else qc, progress=False)
        typer.echo(f"{enc.name}: {report!r}")
        for name, why in report.failed.items():
            typer.echo(f"FAILED {name}: {why}", err=True)
        failed += bool(report.failed and not report.done and not report.skipped)
    if failed:
        raise typer.Exit(1)


def encode_patient(
    manifest: Annotated[Path, typer.Argument(help="CSV with patient_id, image_path "
                                                  "[, sample_id]")],
    outdir: Annotated[Path, typer.Option("-o", "--outdir")],
    slide_encoder: Annotated[str, typer.Option("--slide-encoder", "-s")] = "mean",
    extractor: Annotated[str | None, typer.Option("-e", "--extractor")] = None,
    tile_px: Annotated[int | None, typer.Option()] = None,
    tile_um: Annotated[str | None, typer.Option()] = None,
    qc: Annotated[str | None, typer.Option()] = "otsu",
    random_weights: Annotated[bool, typer.Option(help="testing only")] = False,
) -> None:
    """Patient embeddings (mean of each patient's slide embeddings), manifest order."""
    import torch

    check_inputs_exist([manifest])  # and its columns, before any model is built
    read_manifest(manifest, required=("patient_id", "image_path"))
    enc = build_slide_encoder(slide_encoder, pretrained=not random_weights)
    pre = PreprocessingConfig(tile_px=tile_px, tile_um=_tile_um(tile_px, tile_um),
                              qc=None if qc in (None, "none") else qc)
    patients = embed_patients(manifest, extractor, enc, preprocessing=pre)
    outdir.mkdir(parents=True, exist_ok=True)
    for p in patients:
        with atomic_path(outdir / f"{p.patient_id}.pt") as tmp:
            torch.save(torch.from_numpy(p.patient_embedding.copy()), tmp)
    write_json_atomic(outdir / "patients.json", {
        "patients": [{"patient_id": p.patient_id, "slides": list(p.slide_embeddings)}
                     for p in patients],
        "slide_encoder": enc.dump_config(), "pooling": "mean"})
    typer.echo(json.dumps({"patients": len(patients), "outdir": str(outdir)}))


def register(app: typer.Typer) -> None:
    app.command("encode-slide")(encode_slide)
    app.command("encode-patient")(encode_patient)
