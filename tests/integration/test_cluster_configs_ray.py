"""The launcher configs pass Ray's own validation (defaults filled in), not only the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parents[2] / "cluster_configs"


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_ray_accepts_the_launcher_config(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((CONFIGS / name).read_text()))  # no cloud calls
    validate_config(config)
    assert config["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    assert config["docker"]["image"]
