"""Integration fixtures that need more than one Ray node.

- ``ray_nodes`` (module): a real multi-node Ray cluster on this machine, the tool Ray's own
  fault-tolerance tests use (``ray.cluster_utils.Cluster``): a head and two worker nodes of
  one CPU each, every node its own raylet and object store, every process holding the S3
  server's credentials (like nodes configured with them). Tests run ``tell`` against it as
  a subprocess (``RAY_ADDRESS``), hold CPUs with actors of their own, remove a node
  (:meth:`Nodes.remove_worker`) and put one back (:meth:`Nodes.restore`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

NODE_CPUS = 1
NODE_OBJECT_STORE_BYTES = 192 << 20
WORKER_NODES = 2


@dataclass
class Nodes:
    """The running cluster: ``cluster`` (ray.cluster_utils.Cluster), ``env`` (what a ``tell``
    subprocess needs to join it and reach S3)."""

    cluster: Any
    env: dict[str, str]

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_ids(self) -> dict[str, Any]:
        """{node id (hex): Node} of the worker nodes (the head is never removed)."""
        return {node.node_id: node for node in self.cluster.worker_nodes}

    def remove_worker(self, node_id: str) -> None:
        """Lose a worker node abruptly (its raylet, object store and workers killed)."""
        self.cluster.remove_node(self.node_ids()[node_id], allow_graceful=False)

    def restore(self) -> None:
        """Add worker nodes until there are WORKER_NODES again; wait until they are up."""
        while len(self.cluster.worker_nodes) < WORKER_NODES:
            self.cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=NODE_OBJECT_STORE_BYTES)
        self.cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def ray_nodes(s3_server, shared_ray):
    """A head and WORKER_NODES worker nodes of NODE_CPUS CPUs each; this process is
    connected to it as a driver (for the tests' own actors), so the session's local Ray
    stops first (the next module that needs it starts it again)."""
    shared_ray.stop()
    missing = str(s3_server.workdir / "no-aws-config")
    process_env = {
        **s3_server.env,
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_V2_ENABLED": "1",
        "RAY_AUTH_MODE": "disabled",  # joining checks ~/.ray/auth_token otherwise
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in process_env.items():  # every raylet, so every worker, inherits it
            patch.setenv(key, value)
        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": NODE_CPUS,
                "object_store_memory": NODE_OBJECT_STORE_BYTES,
                "include_dashboard": False,
                # A lost node is declared dead after 3 failed checks 0.5 s apart (Ray's
                # default: 5 checks 3 s apart, 15 s): the tests check what the jobs do once
                # Ray has declared a node dead, not how long Ray takes to notice.
                "_system_config": {
                    "health_check_period_ms": 500,
                    "health_check_failure_threshold": 3,
                },
            },
        )
        nodes = Nodes(cluster, {})
        try:
            nodes.restore()
            ray.init(address=cluster.address, log_to_driver=False)
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(process_env, RAY_ADDRESS=cluster.address, PYTHONUNBUFFERED="1")
            nodes.env = env
            yield nodes
        finally:
            ray.shutdown()
            cluster.shutdown()
