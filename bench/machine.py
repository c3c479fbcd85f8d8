"""What a benchmark ran on, recorded in every result JSON under ``"machine"``.

One shape for every benchmark: the load average is ``load_avg_start`` (taken by
:func:`machine_info`) and ``load_avg_end`` (taken by :func:`finish`), the names
``scripts/render_results.py`` reads.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

_VERSIONS = ("ray", "torch", "faiss-cpu", "scikit-learn", "numpy", "pyarrow")


def import_psutil():
    """psutil: installed, or the copy Ray vendors in ray/thirdparty_files (without importing
    or starting Ray)."""
    try:
        import psutil
    except ModuleNotFoundError:
        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            raise
        vendored = Path(next(iter(spec.submodule_search_locations))) / "thirdparty_files"
        sys.path.append(str(vendored))
        import psutil
    return psutil


def load_avg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(**extra: Any) -> dict[str, Any]:
    """Platform, CPUs, memory, torch threads, package versions and the load average now;
    ``extra`` (e.g. ``device``) is added as given."""
    import torch

    versions = {}
    for name in _VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(import_psutil().virtual_memory().total / (1 << 30), 1),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "load_avg_start": load_avg(),
        **extra,
    }


def finish(machine: dict[str, Any]) -> dict[str, Any]:
    """Record the load average at the end of the run in ``machine``; returns it."""
    machine["load_avg_end"] = load_avg()
    return machine
