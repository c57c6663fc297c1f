"""`slideflow extractors`: every known extractor as a table that fits 80 columns (name, dim,
licence, package, weights on this machine), or `--json` for machines. Answers without torch
and without the network (`model.extractors.weights_status`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ..model import list_extractors
from ..model.extractors.registry import get_spec
from ..model.extractors.weights_status import weights_status


def extractor_rows() -> list[dict[str, Any]]:
    """One dict per known extractor, installed or not, with its weights' status here."""
    rows = []
    for r in list_extractors().to_dict("records"):
        status = "not installed"
        if r["installed"]:
            status = weights_status(get_spec(r["name"]).weights)
        rows.append({"name": r["name"], "dim": None if r["dim"] is None or r["dim"] != r["dim"]
                     else int(r["dim"]), "input_px": _int(r["input_px"]),
                     "license": r["license"], "package": r["distribution"],
                     "installed": bool(r["installed"]), "gated": _bool(r["gated"]),
                     "weights": status, "weights_source": r["weights"] or None,
                     "install": r["install"] or None})
    return rows


def _int(v: Any) -> int | None:
    return None if v is None or v != v else int(v)


def _bool(v: Any) -> bool | None:
    return None if v is None or v != v else bool(v)


def extractors(as_json: Annotated[bool, typer.Option("--json", help="one JSON list, for "
                                                     "scripts")] = False) -> None:
    """List every known extractor: dimension, licence, package, and whether its weights are
    embedded, cached, local (pass --weights) or need a download."""
    rows = extractor_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False,
                  collapse_padding=True)
    table.add_column("name", no_wrap=True)
    table.add_column("dim", justify="right", no_wrap=True, min_width=4)
    table.add_column("licence", no_wrap=True, max_width=15, overflow="ellipsis")
    table.add_column("package", no_wrap=True, min_width=7)
    table.add_column("weights", no_wrap=True, min_width=14)
    for r in rows:
        table.add_row(r["name"], "" if r["dim"] is None else str(r["dim"]),
                      short_licence(r["license"]), short_package(r["package"]), r["weights"])
    Console(width=80, soft_wrap=False).print(table)
    typer.echo("package: core = slideflow; gpl, noncommercial = pip install slideflow-<package>."
               "\nFull licences, weights sources, install commands: slideflow extractors "
               "--json")


def short_package(dist: str) -> str:
    """'noncommercial' of 'slideflow-noncommercial'; 'core' for slideflow itself."""
    short = dist.replace("_", "-").removeprefix("slideflow-")
    return "core" if short == "slideflow" else short


def short_licence(text: str | None) -> str:
    """'BSD-3-Clause' of 'BSD-3-Clause (torchvision weights)': the table keeps one line."""
    return (text or "").split(" (")[0].split(";")[0].strip()


def register(app: typer.Typer) -> None:
    app.command("extractors")(extractors)
