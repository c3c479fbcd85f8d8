"""Run a benchmark: ``python -m bench <name> [args...]`` (from the repository root; bench/
is not part of the installed package; the names are the keys of ``BENCHMARKS``).

Each benchmark is the module ``bench.<name>`` with ``main(argv) -> dict``; it is imported
only when asked for, so a benchmark whose module is missing (or fails to import) does not
stop the others. ``python -m bench <name> --help`` shows its arguments.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

BENCHMARKS = {
    "quality": "ACC/NMI/ARI of TELL per seed beside scikit-learn k-means and the paper.",
    "train": "Training throughput (rows/s) of the Ray Train job.",
    "assign": "Assignment throughput (rows/s) of the Ray Data assign job.",
    "seeding_repair": "Seeding and center-repair time as functions of k (issue #14).",
    "scale_k": "TELL defaults vs faiss and MiniBatchKMeans from k=256 to 16,384 (issue #14).",
    "job_split": "The Ray job's time beside the estimator's at the defaults (issue #14).",
    "two_level": "The two-level model, k=1,048,576 on 10M x 64 rows from Parquet (issue #14).",
    "two_level_job": "tell train --levels 2 at growing N: the driver's memory (issue #14).",
    "headroom": "10-NN purity vs k-means ACC per data set: what a learned encoder can add.",
    "gpu": "The GPU rows of issues #14 and #11, as one prepared run for a lent GPU.",
}
EXIT_USAGE = 2


def _usage() -> str:
    lines = ["usage: python -m bench {" + ",".join(BENCHMARKS) + "} [args...]", ""]
    lines += [f"  {name:<8} {text}" for name, text in BENCHMARKS.items()]
    return "\n".join(lines)


def load_benchmark(name: str) -> Callable[[list[str]], dict]:
    """The ``main`` of ``bench.<name>``; raises LookupError with a clear message."""
    if name not in BENCHMARKS:
        raise LookupError(f"Unknown benchmark {name!r}; choose one of {list(BENCHMARKS)}.")
    module_name = f"bench.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the benchmark exists but one of its own imports is missing
        raise LookupError(
            f"Benchmark {name!r} is not available: {module_name.replace('.', '/')}.py "
            "does not exist yet."
        ) from None
    main = getattr(module, "main", None)
    if not callable(main):
        raise LookupError(f"{module_name} has no main(argv) function.")
    return main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else EXIT_USAGE
    try:
        run = load_benchmark(argv[0])
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    run(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
