"""TELL: interpretable neural clustering (k-means as a differentiable layer).

A plain torch + numpy library; it never imports Ray (the Ray jobs live in ``jobs``).
"""

import importlib
from typing import Any

# Public name -> defining module. Imported on first use (PEP 562) so that light users (the
# CLI's argument parsing, the error classes) do not pay for torch and scikit-learn imports.
_EXPORTS = {
    "TELL": "tell.estimator",
    "Assignment": "tell.assign",
    "ClusterLayer": "tell.layer",
    "EncoderSpec": "tell.encoders",
    "NotFittedError": "tell.errors",
    "TELLNet": "tell.model",
    "TELLOutput": "tell.model",
    "TellCheckpointError": "tell.errors",
    "TellConfigError": "tell.errors",
    "TellDataError": "tell.errors",
    "TellError": "tell.errors",
    "TellStorageError": "tell.errors",
    "TrainConfig": "tell.config",
    "TwoLevelModel": "tell.two_level",
    "assign": "tell.assign",
    "cluster_accuracy": "tell.metrics",
    "cluster_sizes": "tell.metrics",
    "clustering_scores": "tell.metrics",
    "fit_two_level": "tell.two_level",
    "inertia": "tell.metrics",
    "kmeans_plusplus": "tell.init",
    "partition_inertia": "tell.metrics",
    "random_centers": "tell.init",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tell' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "TELL",
    "Assignment",
    "ClusterLayer",
    "EncoderSpec",
    "NotFittedError",
    "TELLNet",
    "TELLOutput",
    "TellCheckpointError",
    "TellConfigError",
    "TellDataError",
    "TellError",
    "TellStorageError",
    "TrainConfig",
    "TwoLevelModel",
    "assign",
    "cluster_accuracy",
    "cluster_sizes",
    "clustering_scores",
    "fit_two_level",
    "inertia",
    "kmeans_plusplus",
    "partition_inertia",
    "random_centers",
]

__version__ = "0.1.0"
