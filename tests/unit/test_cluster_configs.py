"""Deployment files (issue #5): launcher configs, KubeRay manifests, Dockerfile, job configs.

They are checked without a cloud: the launcher YAMLs against the JSON schema shipped in the
ray package (found without importing ray), every command they run against the real ``tell``
parser and job schema, and every in-image path against this repository.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from jobs.cli import COMMANDS, build_parser
from jobs.config import job_fields, load_job

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "cluster_configs"
LAUNCHERS = ("aws-gpu.yaml", "gcp-gpu.yaml")
KUBERAY = sorted((CONFIGS / "kuberay").glob("*.yaml"))
APP = "/app"  # WORKDIR of the image: the repository root is copied there
IMAGE_PATH = re.compile(r"/app/[\w./-]+")


def _ray_schema() -> dict:
    spec = importlib.util.find_spec("ray")  # locates the package without importing it
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in list(docs):  # RayJob manifests embedded in ConfigMaps (the plain CronJob)
        if doc.get("kind") == "ConfigMap":
            docs += [yaml.safe_load(v) for v in doc["data"].values()]
    return docs


def _rayjob_specs() -> list[tuple[str, dict]]:
    specs = []
    for path in KUBERAY:
        for doc in _docs(path):
            if doc.get("kind") == "RayJob":
                specs.append((path.name, doc["spec"]))
            elif doc.get("kind") == "RayCronJob":
                specs.append((path.name, doc["spec"]["jobTemplate"]))
    return specs


def _commands() -> list[tuple[str, str]]:
    """Every `tell ...` command line the deployment files run."""
    found = [(name, spec["entrypoint"]) for name, spec in _rayjob_specs()]
    for name in LAUNCHERS:
        for line in (CONFIGS / name).read_text().splitlines():
            if "ray job submit" in line and " -- tell " in line:
                found.append((name, line.split(" -- ", 1)[1]))
    readme = (CONFIGS / "README.md").read_text()
    for line in re.findall(r"-- (tell [^\n`\\]+)", readme):
        found.append(("README.md", line.strip()))
    for line in re.findall(r"-- python -m jobs\.cli ([^\n`\\]+)", readme):  # working_dir form
        found.append(("README.md", "tell " + line.strip()))
    return found


def _in_repo(image_path: str) -> Path:
    return ROOT / image_path[len(APP) + 1 :]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_configs_match_rays_schema(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    jsonschema.validate(config, _ray_schema())
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    gpu = nodes["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert config["docker"]["image"] == _image_tag()
    assert config["provider"]["type"] == name.split("-")[0]


def _image_tag() -> str:
    tags = {c["image"] for _, s in _rayjob_specs() for c in _containers(s)}
    assert len(tags) == 1, f"every manifest should run the same image: {tags}"
    return tags.pop()


def _containers(spec: dict) -> list[dict]:
    cluster = spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize(
    ("name", "spec"), _rayjob_specs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_rayjobs_request_gpus_and_clean_up(name, spec):
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    cluster = spec["rayClusterSpec"]
    installed = importlib.metadata.version("ray").split(".")[:2]
    assert cluster["rayVersion"].split(".")[:2] == installed  # same minor release as the image
    for group in cluster["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
            assert int(resources["limits"]["nvidia.com/gpu"]) >= 1


def test_scheduled_assignment_is_incremental_in_both_variants():
    cron = _docs(CONFIGS / "kuberay" / "raycronjob-assign.yaml")[0]
    assert cron["kind"] == "RayCronJob" and cron["apiVersion"] == "ray.io/v1"
    assert cron["spec"]["schedule"] and "--incremental" in cron["spec"]["jobTemplate"]["entrypoint"]
    docs = _docs(CONFIGS / "kuberay" / "cronjob-assign.yaml")
    plain = next(d for d in docs if d.get("kind") == "CronJob")
    assert plain["spec"]["concurrencyPolicy"] == "Forbid" and plain["spec"]["timeZone"]
    job = next(d for d in docs if d.get("kind") == "RayJob")
    assert "--incremental" in job["spec"]["entrypoint"] and job["metadata"]["generateName"]
    volume = plain["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]
    configmap = next(d for d in docs if d.get("kind") == "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]


@pytest.mark.parametrize(("where", "command"), _commands(), ids=lambda v: v[:60])
def test_every_command_parses_and_its_config_exists(where, command):
    argv = shlex.split(command)
    assert argv[0] == "tell" and argv[1] in COMMANDS, f"{where}: {command}"
    args = build_parser().parse_args(argv[1:])  # unknown flags exit here
    overrides = {name: getattr(args, name) for name, *_ in job_fields(args.command)}
    config = args.config
    if config:  # in the image (/app/...) or relative to the working_dir (the repo root)
        config = str(_in_repo(config) if config.startswith(APP) else ROOT / config)
        assert Path(config).is_file(), f"{where} runs {args.config}, missing in the repo"
    load_job(args.command, config, overrides)  # the job config validates


def test_every_path_inside_the_image_exists_in_the_repo():
    dockerfile = (CONFIGS / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.\d+-py311-gpu$", dockerfile, re.M)
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M)
    for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", dockerfile, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, missing"
    files = [CONFIGS / n for n in LAUNCHERS] + KUBERAY + [CONFIGS / "README.md"]
    paths = {p.rstrip(".") for f in files for p in IMAGE_PATH.findall(f.read_text())}
    assert paths, "no in-image path found: the test would check nothing"
    for path in sorted(paths):
        assert _in_repo(path).exists(), f"{path} is referenced but not in the repo"


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_every_example_job_config_loads(kind):
    path = CONFIGS / "jobs" / f"{kind}.yaml"
    job = load_job(kind, str(path), {})
    values = yaml.safe_load(path.read_text())
    for key in ("data", "model", "assignments"):  # realistic: the inputs live on S3
        if key in values:
            assert values[key].startswith("s3://"), f"{kind}.yaml: {key}"
    assert job is not None


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    top = capsys.readouterr().out
    assert all(command in top for command in COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        flags = ["--config", "--debug"] + [
            "--" + name.replace("_", "-") for name, *_ in job_fields(command)
        ]
        missing = [flag for flag in flags if flag not in text]
        assert not missing, f"tell {command} --help lacks {missing}"
