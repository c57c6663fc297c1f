"""A tiny extractor (4 features, one strided conv) for the hostile runs: registered in this
process by `tiny_extractor`, and in a CLI subprocess by `--feature-plugin` from `plugin_args`.
Its weights come from a checkpoint the test writes (no network, deterministic)."""

from __future__ import annotations

from pathlib import Path

NAME = "hostile_tiny"
PLUGIN = '''
import torch
import slideflow as sf
from slideflow.model.extractors.registry import ExtractorSpec


class HostileTiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


sf.register_extractor(ExtractorSpec(name="hostile_tiny", family="plugin", dim=4, input_px=32,
                                    license="MIT", citation="tests"), lambda spec: HostileTiny())
'''


def plugin_files(folder: Path) -> tuple[Path, Path]:
    """(plugin file, checkpoint) in `folder` (written once)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    plugin, ckpt = folder / "hostile_tiny.py", folder / "hostile_tiny.pth"
    if not plugin.exists():
        plugin.write_text(PLUGIN)
        g = torch.Generator().manual_seed(0)
        torch.save({"conv.weight": torch.randn(4, 3, 3, 3, generator=g),
                    "conv.bias": torch.randn(4, generator=g)}, ckpt)
    return plugin, ckpt


def plugin_args(folder: Path) -> list[str]:
    """CLI options that load and use the tiny extractor."""
    plugin, ckpt = plugin_files(folder)
    return ["-e", NAME, "--feature-plugin", str(plugin), "--weights", str(ckpt)]


def tiny_extractor(folder: Path, **kwargs):
    """The tiny extractor in this process (registered on first use)."""
    import slideflow as sf
    from slideflow.model import load_plugin
    from slideflow.model.extractors import registry

    plugin, ckpt = plugin_files(folder)
    if not registry.is_registered(NAME):
        load_plugin(plugin)
    return sf.build_feature_extractor(NAME, weights=ckpt, **kwargs)
