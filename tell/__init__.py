"""TELL: interpretable neural clustering (k-means as a differentiable layer).

A plain torch + numpy library; it never imports Ray (the Ray jobs live in ``jobs``).
"""

from tell.assign import Assignment, assign
from tell.config import TrainConfig
from tell.encoders import EncoderSpec
from tell.errors import (
    NotFittedError,
    TellCheckpointError,
    TellConfigError,
    TellDataError,
    TellError,
    TellStorageError,
)
from tell.estimator import TELL
from tell.init import kmeans_plusplus, random_centers
from tell.layer import ClusterLayer
from tell.metrics import (
    cluster_accuracy,
    cluster_sizes,
    clustering_scores,
    inertia,
    partition_inertia,
)
from tell.model import TELLNet, TELLOutput

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
    "assign",
    "cluster_accuracy",
    "cluster_sizes",
    "clustering_scores",
    "inertia",
    "kmeans_plusplus",
    "partition_inertia",
    "random_centers",
]

__version__ = "0.1.0"
