"""Parallel runners for feature bags: one worker process per device on one machine
(`devices.run_devices`) and Ray tasks on actors across a cluster (`ray_runner.run_ray`).

Both hand slides, longest first, to workers that each hold their own extractor and run
`slideflow.bag_runner.process_job`: the same lock files and atomic writers as a serial run, so
their bags are byte-identical to it and several runs can share an output folder.
"""

from __future__ import annotations

from typing import Any

from ...model.extractors.rebuild import rebuild_extractor


def worker_extractors(targets: list[Any], device: Any) -> list[Any]:
    """The targets with extractors rebuilt from their configs on `device` (in a worker)."""
    out = []
    for t in targets:
        prov = t.cfg.get("provenance") or {}
        overrides: dict[str, Any] = {"device": device, "batch_size": t.batch_size}
        if prov.get("precision") not in (None, "fp32"):
            overrides["mixed_precision"] = prov["precision"]
        ext, _ = rebuild_extractor(t.cfg, **overrides)
        out.append(t.with_extractor(ext))
    return out


def driver_threads() -> int:
    """Torch threads for CPU workers: the driver's own count. oneDNN results depend on the
    thread count (1e-5 differences between 1 and 2 threads), so CPU workers use the count a
    serial run would, and their bags equal its bags bit for bit. (GPU workers do not care.)"""
    import torch

    return torch.get_num_threads()


def device_list(spec: Any) -> list[str]:
    """`'0,1'` -> ['cuda:0', 'cuda:1']; names ('cpu', 'cuda:1', 'mps') are kept."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        out.append(f"cuda:{item}" if item.isdigit() else item)
    if not out:
        raise ValueError(f"no devices in {spec!r}; use e.g. '0,1' or ['cuda:0', 'cuda:1']")
    return out
