"""Subcommands whose module is imported only when they run (or show their own help).

`slideflow --help` lists them from `LAZY` (name -> module, help line), so start-up loads
neither those modules nor what they import (models, MIL, the AtlasPatch layer), and each
module imports what it needs at its top. A test checks that every help line here is the one
the command itself declares.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
import typer
from typer.core import TyperGroup

#: command -> (module in slideflow.cli with a `register(app)`, its help line), in help order
LAZY: dict[str, tuple[str, str]] = {
    "extractors": ("extractors", "List every known extractor: dimension, licence, package, "
                                 "and whether its weights are embedded, cached, local (pass "
                                 "--weights) or need a download."),
    "encode-slide": ("encode", "Slide embeddings straight from slides (tile bags are made or "
                               "reused on the way)."),
    "encode-patient": ("encode", "Patient embeddings (mean of each patient's slide "
                                 "embeddings), manifest order."),
    "doctor": ("doctor", "What this machine can do (readers, torch/CUDA, GPU decode, "
                         "TensorFlow, Ray, Hugging Face, weights, disk); with COMMAND, exit 1 "
                         "when something it needs is missing."),
    "mil": ("mil", "Multiple-instance learning on feature bags."),
    "atlaspatch": ("atlaspatch", "AtlasPatch-compatible commands (docs/porting.md)."),
}


def load_command(name: str) -> click.Command:
    """The click command `name`, built from its module's `register`."""
    module = importlib.import_module(f"{__package__}.{LAZY[name][0]}")
    holder = typer.Typer(add_completion=False, rich_markup_mode=None)  # as the root app
    module.register(holder)
    command = typer.main.get_group(holder).commands.get(name)
    if command is None:  # pragma: no cover - LAZY names a command its module lacks
        raise RuntimeError(f"slideflow.cli.{LAZY[name][0]} registers no command {name!r}")
    return command


class LazyGroup(TyperGroup):
    """The root group: eager commands as typer builds them, then the `LAZY` ones."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        eager = list(super().list_commands(ctx))
        return eager + [n for n in LAZY if n not in eager]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY:
            command = load_command(cmd_name)
            self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: Any) -> None:
        """Click's command list, with the help lines of commands not loaded taken from
        `LAZY` (listing them must not import them)."""
        names = [n for n in self.list_commands(ctx)
                 if n not in self.commands or not self.commands[n].hidden]
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(n, self.commands[n].get_short_help_str(limit) if n in self.commands
                 else click.Command(n, help=LAZY[n][1]).get_short_help_str(limit))
                for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
