"""Bad inputs through the real ``tell`` CLI, as subprocesses, on real storage (issue #6).

Every case runs the installed ``tell`` console script in its own process, on a local directory
or on a real S3 server (SeaweedFS on loopback), and asserts the promise of
docs/RELIABILITY.md:

- refused inputs: exit code 2, exactly ONE line on stderr, ``tell <command>: error: ...``,
  naming the problem (no traceback unless --debug), nothing on stdout, and nothing written:
  the case's directory (or S3 prefix) stays empty: no ``_SUCCESS``, no model, no checkpoint;
- unusable rows (NaN/inf, wrong length, null) in ``tell assign``: quarantined into
  ``_rejected`` with a reason and counted in the ``_SUCCESS`` manifest, exit code 0;
  in ``tell train``: refused before any training worker starts.

Cases that fail before Ray get ``RAY_ADDRESS`` pointing at a closed port, so a job that
tried to start or join Ray would fail differently (and slowly): they prove the refusal comes
first. They run concurrently, three at a time (the cost is mostly the interpreter's
imports). Cases that need Ray join the session's local Ray cluster through ``RAY_ADDRESS``,
like a job submitted with ``ray job submit``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.commit import reader, writer

pytestmark = pytest.mark.integration

N_ROWS, DIM, K = 300, 8, 4
CONCURRENCY = int(os.environ.get("TELL_TEST_CLI_CONCURRENCY", "3"))
TIMEOUT_S = 300  # per subprocess; the machine may be loaded
BAD_SECRET = "wrong-secret-5b1f0c9e-do-not-echo"
BAD_ACCESS_KEY = "AKIAWRONGKEY7Q2ZD9X1"
NO_RAY = "127.0.0.1:9"  # closed port: a job that reaches Ray fails differently
ERROR_LINE = re.compile(r"^tell (train|assign|evaluate|explain|demo): error: ")
# Everything else a job prints on stderr is its own progress line (issue 12: Ray's log
# records, C++ lines and forwarded worker lines go to the log file, not to the console).
LOG_LINE = re.compile(r"^tell (train|assign|evaluate|explain|demo): (?!(internal )?error: )")


def tell_command() -> list[str]:
    """The installed console script (what users run), else ``python -m jobs.cli``."""
    script = Path(sys.executable).with_name("tell")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobs.cli"]


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    wall_s: float

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> Outcome:
    started = time.monotonic()
    proc = subprocess.run(
        [*tell_command(), *argv],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=TIMEOUT_S,
    )  # fmt: skip
    return Outcome(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(RAY_ADDRESS=NO_RAY, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


# ------------------------------------------------------------------------------ inputs


def _table(X, *, ids=None, list_type=False, lengths=None, nulls=()):
    """id + ``embedding`` (fixed_size_list<float32>, or list<float32> with ragged rows)."""
    ids = np.arange(len(X)) if ids is None else ids
    if not list_type:
        values = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    else:
        lengths = lengths or {}
        rows = [
            None if i in nulls else [*map(float, X[i]), 0.5][: lengths.get(i, X.shape[1])]
            for i in range(len(X))
        ]
        values = pa.array(rows, pa.list_(pa.float32()))
    return pa.table({"id": pa.array(ids, pa.int64()), "embedding": values})


def _write(directory: Path, table: pa.Table, n_files: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, n_files + 1).astype(int)
    for i in range(n_files):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        pq.write_table(part, directory / f"part-{i:05d}.parquet")
    return directory


class _Payload:
    """A pickle that, if ever unpickled, creates ``marker`` (it must never exist)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _model_variant(model: Path, dest: Path, edit) -> Path:
    shutil.copytree(model, dest)
    edit(dest)
    return dest


def _edit_meta(**changes):
    def edit(directory: Path) -> None:
        meta = json.loads((directory / "metadata.json").read_text())
        meta.update(changes)
        (directory / "metadata.json").write_text(json.dumps(meta))

    return edit


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every bad (and good) input of the table, on local disk; returns {placeholder: path}."""
    import torch

    from jobs.model import save_model
    from tell import TELL

    root = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_ROWS, DIM)).astype(np.float32)
    paths: dict[str, Path] = {"root": root}
    paths["good"] = _write(root / "good", _table(X))
    Xn = X.copy()
    Xn[[3, 150], 2] = np.nan
    Xn[200, 0] = np.inf
    paths["nan"] = _write(root / "nan", _table(Xn))
    Xz = X.copy()
    Xz[[123, 140]] = 0.0  # 3 files of 100 rows: rows 23 and 40 of the second
    paths["zero_vector"] = _write(root / "zero_vector", _table(Xz))
    paths["ragged"] = _write(root / "ragged", _table(X, list_type=True, lengths={10: 5, 250: 5}))
    paths["mixed"] = _write(
        root / "mixed", _table(Xn, list_type=True, lengths={10: 5, 251: 9}, nulls={99})
    )
    strings = pa.table({"id": np.arange(N_ROWS), "embedding": [f"row {i}" for i in range(N_ROWS)]})
    paths["strings"] = _write(root / "strings", strings, 1)
    fsl_strings = pa.table(
        {
            "id": np.arange(N_ROWS),
            "embedding": pa.array([["a"] * DIM] * N_ROWS, pa.list_(pa.string(), DIM)),
        }
    )
    paths["fsl_strings"] = _write(root / "fsl_strings", fsl_strings, 1)
    paths["empty"] = root / "empty"
    paths["empty"].mkdir()
    paths["zero_rows"] = _write(root / "zero_rows", _table(X).slice(0, 0), 1)
    paths["corrupt"] = _write(root / "corrupt", _table(X))
    (paths["corrupt"] / "part-00003.parquet").write_bytes(b"not parquet at all " * 20)
    paths["widths"] = root / "widths"
    _write(paths["widths"] / "a", _table(X), 1)
    _write(paths["widths"] / "b", _table(X[:, :6]), 1)
    paths["w6"] = _write(root / "w6", _table(X[:, :6]), 1)
    paths["list_fixed"] = root / "list_fixed"  # issue 13: list<double> beside a fixed list
    _write(paths["list_fixed"] / "a", _table(X), 1)
    doubles = pa.array(X.astype(np.float64).tolist(), pa.list_(pa.float64()))
    _write(paths["list_fixed"] / "b", pa.table({"id": np.arange(N_ROWS), "embedding": doubles}), 1)
    paths["uncommitted"] = root / "uncommitted" / "run-1"
    _write(paths["uncommitted"] / "_staging" / "attempt-1", _table(X), 1)

    est = TELL(K, max_iter=2, batch_size=64, random_state=0).fit(X)
    model = root / "model"
    save_model(str(model), est.model_, {"run_name": "bad-inputs", "epoch": 1})
    paths["model"] = model
    paths["ckpt_disagree"] = _model_variant(model, root / "ckpt-disagree", _edit_meta(n_clusters=7))
    paths["ckpt_newer"] = _model_variant(model, root / "ckpt-newer", _edit_meta(format_version=99))

    def plant(name: str, write) -> Path:
        directory = root / name
        marker = root / f"PWNED-{name}"
        paths[f"marker_{name}"] = marker
        return _model_variant(model, directory, lambda d: write(d, _Payload(marker)))

    weights = "model.safetensors"
    live = root / "payload-is-live"  # the payload works: unpickling it does create its marker
    pickle.loads(pickle.dumps(_Payload(live)))
    assert live.exists()
    paths["ckpt_pickle"] = plant(
        "ckpt-pickle", lambda d, p: (d / weights).write_bytes(pickle.dumps(p))
    )
    paths["ckpt_pickle_v0"] = plant(
        "ckpt-pickle-v0", lambda d, p: (d / weights).write_bytes(pickle.dumps(p, protocol=0))
    )
    paths["ckpt_torch_save"] = plant(
        "ckpt-torch-save", lambda d, p: torch.save({"weights": p}, d / weights)
    )

    configs = root / "configs"
    configs.mkdir()
    for name, text in {
        "unknown_key": "k: 3\nepochs: 1\nbogus_key: 1\n",
        "wrong_type": "k: five\n",
        "name_traversal": "k: 3\nname: a/../../b\n",
    }.items():
        (configs / f"{name}.yaml").write_text(text)
        paths[f"cfg_{name}"] = configs / f"{name}.yaml"
    return {name: str(path) for name, path in paths.items()}


# ------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # "{name}" placeholders: world paths, {out}, {s3}
    pattern: str  # regex the one error line must match
    env: str = "local"  # local | s3 | s3-unreachable | s3-bad-secret | s3-bad-key
    marker: str | None = None  # a planted pickle's marker: must not exist afterwards
    debug: bool = False

    def argv_for(self, values: dict[str, str]) -> list[str]:
        return [arg.format(**values) for arg in self.argv]


def _train(data: str, *extra: str) -> tuple[str, ...]:
    return ("train", "--data", data, "--out", "{out}", "--k", "3", "--epochs", "1", *extra)


def _assign(model: str, data: str = "{good}", *extra: str) -> tuple[str, ...]:
    return ("assign", "--model", model, "--data", data, "--out", "{out}", "--run-id", "r", *extra)


LOCAL_CASES = [
    # issue 13: valid jobs, RAY_ADDRESS at a closed port: one line within the connect bound
    # (first: they wait out the 10 s bound while the other cases use the CPUs)
    Case("unreachable-ray-cluster-train", _train("{good}"),
         r"Cannot reach the Ray cluster at RAY_ADDRESS=127\.0\.0\.1:9: Connection refused "
         r"for 10 s\. Check RAY_ADDRESS"),
    Case("unreachable-ray-cluster-assign", _assign("{model}"),
         r"Cannot reach the Ray cluster at RAY_ADDRESS=127\.0\.0\.1:9"),
    # data
    Case("missing-column", _train("{good}", "--column", "nope"),
         r"Column 'nope' not found in \S+part-00000\.parquet; columns are \['id', 'embedding'\]"),
    Case("non-numeric-column", _train("{strings}"),
         r"Column 'embedding' has type string, which is not a numeric feature column"),
    Case("non-numeric-fixed-size-list", _train("{fsl_strings}"),
         r"Column 'embedding' has type fixed_size_list<element: string>\[8\], which is not a "
         r"numeric"),
    Case("empty-dataset-no-files", _train("{empty}"), r"No Parquet files under \S+/empty"),
    Case("empty-dataset-no-rows", _train("{zero_rows}"), r"has no rows \(1 file\(s\)\)"),
    Case("k-greater-than-rows", _train("{good}", "--k", "500"),
         r"k=500 is larger than the number of rows in \S+ \(300\)"),
    Case("k-below-2", _train("{good}", "--k", "1"), r"The 'k' must be in \[2, inf\]\. Got 1\."),
    Case("corrupt-parquet-among-good", _train("{corrupt}"),
         r"part-00003\.parquet is not a valid Parquet file"),
    Case("vector-length-differs-across-files", _train("{widths}"),
         r"Column 'embedding' has 8 values per row in \S+ but 6 in \S+; every file must have "
         r"the same feature width"),
    Case("list-beside-fixed-size-list", _train("{list_fixed}"),
         r"Column 'embedding' is list<\w+: double> \(variable length\) in \S+/b/\S+ but "
         r"fixed_size_list<element: float>\[8\] \(fixed width\) in \S+/a/\S+; every file "
         r"must store the feature column with the same type"),
    Case("out-is-a-file", ("train", "--data", "{good}", "--out", "{good}/part-00000.parquet",
                           "--k", "3", "--epochs", "1"),
         r"Output \S+/part-00000\.parquet is a file; the output must be a directory"),
    Case("vector-length-differs-from-model", _assign("{model}", "{w6}"),
         r"Column 'embedding' of \S+ has 6 values per row, but model \S+ expects 8"),
    Case("evaluate-uncommitted-run", ("evaluate", "--assignments", "{uncommitted}"),
         r"is not a committed assignment: it has no _SUCCESS manifest"),
    # config
    Case("unknown-config-key", ("train", "--config", "{cfg_unknown_key}", "--data", "{good}",
                                "--out", "{out}"), r"Unknown key 'bogus_key' in the train config"),
    Case("wrong-config-type", ("train", "--config", "{cfg_wrong_type}", "--data", "{good}",
                               "--out", "{out}"), r"The 'k' must be an integer\. Got str 'five'"),
    Case("wrong-flag-type", _train("{good}", "--k", "abc"),
         r"argument --k: invalid int value: 'abc' \(see tell train --help\)"),
    Case("name-traversal-in-config", ("train", "--config", "{cfg_name_traversal}", "--data",
                                      "{good}", "--out", "{out}"),
         r"The 'name' must be 1-128 characters .* Got 'a/\.\./\.\./b'"),
    Case("run-id-traversal-flag", (*_assign("{model}"), "--run-id", "../x"),
         r"The 'run_id' must be .* '\.\./x'"),
    Case("s3-key-traversal", _train("s3://tell-bucket/in/../../other"),
         r"S3 key 'in/\.\./\.\./other' in 's3://tell-bucket/in/\.\./\.\./other' is unsafe"),
    # checkpoints
    Case("checkpoint-metadata-disagrees", _assign("{ckpt_disagree}"),
         r"tensor 'cluster\.weight' has shape \(4, 8\) but the metadata implies \(7, 8\)"),
    Case("checkpoint-newer-format", _assign("{ckpt_newer}"),
         r"checkpoint format version 99 is newer than this version of tell supports \(1\)"),
    Case("checkpoint-is-pickle", _assign("{ckpt_pickle}"),
         r"model\.safetensors is a pickle/torch\.save file; only safetensors checkpoints",
         marker="marker_ckpt-pickle"),
    Case("checkpoint-is-torch-save", _assign("{ckpt_torch_save}"),
         r"model\.safetensors is a pickle/torch\.save file", marker="marker_ckpt-torch-save"),
    Case("checkpoint-is-protocol-0-pickle",
         ("explain", "--model", "{ckpt_pickle_v0}", "--data", "{good}", "--out", "{out}"),
         r"model\.safetensors is not a valid safetensors file", marker="marker_ckpt-pickle-v0"),
    # --debug: the traceback, then the same line and exit code
    Case("debug-shows-traceback", ("--debug", *_train("{good}", "--k", "500")),
         r"k=500 is larger than the number of rows", debug=True),
]  # fmt: skip

S3_CASES = [
    Case("s3-unreachable-endpoint", _train("{s3}/good"),
         r"Cannot reach the S3 endpoint http://127\.0\.0\.1:\d+ while checking access to "
         r"s3://\S+/good .*Check AWS_ENDPOINT_URL", env="s3-unreachable"),
    Case("s3-bad-secret-key", _train("{s3}/good"),
         r"S3 at http://127\.0\.0\.1:\d+ rejected the credentials \(SignatureDoesNotMatch\) "
         r"while checking access to s3://\S+/good", env="s3-bad-secret"),
    Case("s3-bad-access-key", _assign("{s3}/model", "{s3}/good"),
         r"rejected the credentials \(InvalidAccessKeyId\) .*\S+/model", env="s3-bad-key"),
    Case("s3-missing-bucket", _train("s3://tell-no-such-bucket-6e1d/in"),
         r"Bucket 'tell-no-such-bucket-6e1d' does not exist at http://127\.0\.0\.1:\d+",
         env="s3"),
    Case("s3-empty-prefix", _train("{s3}/nothing-here"),
         r"Input s3://\S+/nothing-here does not exist: no object 'nothing-here'", env="s3"),
    Case("s3-missing-column", _train("{s3}/good", "--column", "nope"),
         r"Column 'nope' not found in \S+/good/part-00000\.parquet", env="s3"),
    Case("s3-corrupt-parquet-among-good", _train("{s3}/corrupt"),
         r"\S+/corrupt/part-00003\.parquet is not a valid Parquet file", env="s3"),
    Case("s3-empty-dataset-no-rows", _train("{s3}/zero_rows"), r"has no rows", env="s3"),
    Case("s3-non-numeric-column", _train("{s3}/strings"),
         r"Column 'embedding' has type string, which is not a numeric feature column", env="s3"),
    Case("s3-non-numeric-fixed-size-list", _train("{s3}/fsl_strings"),
         r"Column 'embedding' has type fixed_size_list<element: string>\[8\], which is not a "
         r"numeric", env="s3"),
    Case("s3-k-greater-than-rows", _train("{s3}/good", "--k", "500"),
         r"k=500 is larger than the number of rows in s3://\S+/good \(300\)", env="s3"),
    Case("s3-vector-length-differs-across-files", _train("{s3}/widths"),
         r"Column 'embedding' has 8 values per row in \S+/widths/a/\S+ but 6 in "
         r"\S+/widths/b/\S+; every file must have the same feature width", env="s3"),
    Case("s3-vector-length-differs-from-model", _assign("{s3}/model", "{s3}/w6"),
         r"Column 'embedding' of s3://\S+/w6\S* has 6 values per row, but model "
         r"s3://\S+/model expects 8", env="s3"),
    Case("s3-run-id-traversal", (*_assign("{s3}/model", "{s3}/good"), "--run-id", "../x"),
         r"The 'run_id' must be .* '\.\./x'", env="s3"),
    Case("s3-checkpoint-metadata-disagrees", _assign("{s3}/ckpt_disagree", "{s3}/good"),
         r"tensor 'cluster\.weight' has shape \(4, 8\) but the metadata implies \(7, 8\)",
         env="s3"),
    Case("s3-checkpoint-newer-format", _assign("{s3}/ckpt_newer", "{s3}/good"),
         r"checkpoint format version 99 is newer than this version of tell supports \(1\)",
         env="s3"),
    Case("s3-checkpoint-is-pickle", _assign("{s3}/ckpt_pickle", "{s3}/good"),
         r"model\.safetensors is a pickle/torch\.save file", env="s3",
         marker="marker_ckpt-pickle"),
    Case("s3-checkpoint-is-torch-save", _assign("{s3}/ckpt_torch_save", "{s3}/good"),
         r"model\.safetensors is a pickle/torch\.save file", env="s3",
         marker="marker_ckpt-torch-save"),
    Case("s3-checkpoint-is-protocol-0-pickle",
         ("explain", "--model", "{s3}/ckpt_pickle_v0", "--data", "{s3}/good", "--out", "{out}"),
         r"model\.safetensors is not a valid safetensors file", env="s3",
         marker="marker_ckpt-pickle-v0"),
]  # fmt: skip

# The world's inputs the S3 rows (above and through Ray, below) read from the bucket.
S3_UPLOADS = (
    "good", "corrupt", "zero_rows", "strings", "fsl_strings", "widths", "w6", "nan", "mixed",
    "model", "ckpt_disagree", "ckpt_newer", "ckpt_pickle", "ckpt_torch_save", "ckpt_pickle_v0",
)  # fmt: skip


def _params(cases):
    return [pytest.param(case, id=case.id) for case in cases]


def _selected(request, test_name: str, cases: list[Case]) -> list[Case]:
    """The cases of ``test_name`` this session will run (all, unless deselected with -k)."""
    wanted = {
        item.callspec.params["case"].id
        for item in request.session.items
        if getattr(item, "originalname", None) == test_name and hasattr(item, "callspec")
    }
    return [case for case in cases if case.id in wanted]


def _run_all(cases, make_run) -> dict[str, Outcome]:
    with ThreadPoolExecutor(max(1, CONCURRENCY)) as pool:
        futures = {case.id: pool.submit(make_run, case) for case in cases}
        return {case_id: future.result() for case_id, future in futures.items()}


def _case_dir(world: dict[str, str], case: Case) -> Path:
    directory = Path(world["root"]) / "cases" / case.id
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _check_refused(case: Case, outcome: Outcome) -> str:
    """Exit 2, one line naming the problem, nothing on stdout; returns the line."""
    detail = f"exit {outcome.code}; stderr:\n{outcome.err[-3000:]}"
    assert outcome.code == 2, detail
    assert outcome.out == "", outcome.out
    lines = outcome.err_lines
    if case.debug:
        assert "Traceback (most recent call last)" in outcome.err, detail
        assert "tell.errors.TellDataError" in outcome.err, detail
        lines = lines[-1:]
    else:
        assert "Traceback" not in outcome.err, detail
    assert len(lines) == 1, f"expected exactly one line on stderr; {detail}"
    assert ERROR_LINE.match(lines[0]), lines[0]
    assert re.search(case.pattern, lines[0]), f"{case.pattern!r} not in {lines[0]!r}"
    return lines[0]


# ------------------------------------------------------------------- before Ray: local


@pytest.fixture(scope="module")
def local_outcomes(request, world):
    cases = _selected(request, "test_refused_locally", LOCAL_CASES)
    env = _base_env()

    def run(case: Case) -> Outcome:
        cwd = _case_dir(world, case)
        return run_cli(case.argv_for({**world, "out": str(cwd / "out")}), env, cwd)

    started = time.monotonic()
    outcomes = _run_all(cases, run)
    print(f"\n{len(cases)} local CLI cases in {time.monotonic() - started:.1f} s")
    return outcomes


@pytest.mark.parametrize("case", _params(LOCAL_CASES))
def test_refused_locally(case, local_outcomes, world):
    line = _check_refused(case, local_outcomes[case.id])
    if case.id.startswith("unreachable-ray-cluster"):
        wall_s = local_outcomes[case.id].wall_s
        assert wall_s < 60, f"took {wall_s:.0f} s to give up on the cluster"
        print(f"{case.id}: {wall_s:.1f} s: {line}")
    # Nothing written: the case's directory (the working directory, parent of --out) is empty.
    leftovers = sorted(str(p) for p in _case_dir(world, case).rglob("*"))
    assert leftovers == [], leftovers
    if case.marker:
        assert not Path(world[case.marker]).exists(), "the planted pickle was executed"


# ---------------------------------------------------------------------- before Ray: S3


@pytest.fixture(scope="module")
def s3_world(s3_server, world):
    """A bucket holding the S3 rows' inputs; returns (s3://bucket, botocore client)."""
    client = s3_server.client()
    bucket = f"tell-bad-inputs-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    for name in S3_UPLOADS:
        local = Path(world[name])
        for path in sorted(local.rglob("*")):
            if path.is_file():
                key = f"{name}/{path.relative_to(local).as_posix()}"
                client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return f"s3://{bucket}", client


def _s3_env(s3_server, kind: str, closed_port) -> dict[str, str]:
    env = {**_base_env(), **s3_server.env}
    missing = str(s3_server.workdir / "no-aws-config")
    env.update(AWS_CONFIG_FILE=missing, AWS_SHARED_CREDENTIALS_FILE=missing)
    if kind == "s3-unreachable":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{closed_port()}"
    elif kind == "s3-bad-secret":
        env["AWS_SECRET_ACCESS_KEY"] = BAD_SECRET
    elif kind == "s3-bad-key":
        env["AWS_ACCESS_KEY_ID"] = BAD_ACCESS_KEY
    return env


def _keys(client, bucket: str, prefix: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for obj in listing.get("Contents", [])]


@pytest.fixture(scope="module")
def s3_outcomes(request, s3_server, s3_world, world, closed_port):
    s3, _ = s3_world
    cases = _selected(request, "test_refused_on_s3", S3_CASES)

    def run(case: Case) -> Outcome:
        values = {**world, "s3": s3, "out": f"{s3}/cases/{case.id}/out"}
        return run_cli(case.argv_for(values), _s3_env(s3_server, case.env, closed_port),
                       _case_dir(world, case))  # fmt: skip

    started = time.monotonic()
    outcomes = _run_all(cases, run)
    print(f"\n{len(cases)} S3 CLI cases in {time.monotonic() - started:.1f} s")
    return outcomes


@pytest.mark.parametrize("case", _params(S3_CASES))
def test_refused_on_s3(case, s3_outcomes, s3_world, s3_server, world):
    outcome = s3_outcomes[case.id]
    line = _check_refused(case, outcome)
    s3, client = s3_world
    bucket = s3[len("s3://") :]
    assert _keys(client, bucket, f"cases/{case.id}/") == []
    assert list(_case_dir(world, case).rglob("*")) == []
    for secret in (s3_server.secret_key, BAD_SECRET):
        assert secret not in outcome.err and secret not in outcome.out
    if case.env == "s3-unreachable":
        assert outcome.wall_s < 120, f"took {outcome.wall_s:.0f} s to give up"
    if case.marker:
        assert not Path(world[case.marker]).exists(), "the planted pickle was executed"
    print(f"{case.id}: {outcome.wall_s:.1f} s: {line}")


# ---------------------------------------------------------------- rows, through Ray


def _ray_env(ray_cluster, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["RAY_ADDRESS"] = ray_cluster.address_info["gcs_address"]
    if os.environ.get("RAY_AUTH_MODE"):  # set by ray.init for the cluster it started
        env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
    return env


NAN_ROWS = (
    r"3 of 300 rows of column 'embedding' in \S+/nan cannot be used for training "
    r"\(first: non-finite value\)"
)
# case id -> (argv, the error line's pattern; None: the run succeeds). "s3-" cases read the
# world's inputs from the bucket and write under s3://BUCKET/cases/ID/out.
RAY_CASES = {
    "train-refuses-nan-inf-rows": (_train("{nan}", "--workers", "1"), NAN_ROWS),
    "train-refuses-wrong-length-rows": (
        _train("{ragged}", "--workers", "1"),
        r"2 of 300 rows of column 'embedding' in \S+/ragged cannot be used for training "
        r"\(first: length 5, expected 8\)",
    ),
    "two-level-train-refuses-zero-vector-rows": (  # by the split task that met them
        _train("{zero_vector}", "--levels", "2", "--workers", "1"),
        r"2 rows of \S+/part-00001\.parquet are zero vectors \(first: row 23\), which have "
        r"no direction to cluster by; remove them for levels: 2\.",
    ),
    "assign-quarantines-bad-rows": (
        _assign("{model}", "{mixed}", "--workers", "1", "--min-rows-per-file", "100"),
        None,
    ),
    "s3-train-refuses-nan-inf-rows": (_train("{s3}/nan", "--workers", "1"), NAN_ROWS),
    "s3-assign-quarantines-bad-rows": (
        _assign("{s3}/model", "{s3}/mixed", "--workers", "1", "--min-rows-per-file", "100"),
        None,
    ),
}


@pytest.fixture(scope="module")
def ray_outcomes(request, ray_with_s3_credentials, s3_server, s3_world, world, closed_port):
    """Runs the selected RAY_CASES against one local Ray whose processes hold the S3
    credentials (like nodes configured with them), so its workers read and write the
    bucket; local cases run against it too."""
    wanted = {
        item.callspec.params["case_id"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_rows_through_ray"
    }
    s3, _ = s3_world
    local_env = _ray_env(ray_with_s3_credentials, _base_env())
    s3_env = _ray_env(ray_with_s3_credentials, _s3_env(s3_server, "s3", closed_port))

    def run(case_id: str) -> Outcome:
        cwd = Path(world["root"]) / "cases" / case_id
        cwd.mkdir(parents=True, exist_ok=True)
        on_s3 = case_id.startswith("s3-")
        out = f"{s3}/cases/{case_id}/out" if on_s3 else str(cwd / "out")
        argv = [a.format(**world, s3=s3, out=out) for a in RAY_CASES[case_id][0]]
        return run_cli(argv, s3_env if on_s3 else local_env, cwd)

    with ThreadPoolExecutor(2) as pool:
        futures = {case_id: pool.submit(run, case_id) for case_id in RAY_CASES if case_id in wanted}
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.parametrize("case_id", list(RAY_CASES))
def test_rows_through_ray(case_id, ray_outcomes, world, s3_world):

    outcome = ray_outcomes[case_id]
    cwd = Path(world["root"]) / "cases" / case_id
    on_s3 = case_id.startswith("s3-")
    s3, client = s3_world
    bucket = s3[len("s3://") :]
    out = f"{s3}/cases/{case_id}/out" if on_s3 else str(cwd / "out")
    lines = outcome.err_lines
    noise = [line for line in lines if not ERROR_LINE.match(line)]
    # Everything else on stderr is one of the job's own progress lines.
    strays = [line for line in noise if not LOG_LINE.match(line)]
    assert "Traceback" not in outcome.err, outcome.err[-3000:]
    print(
        f"\n{case_id}: exit {outcome.code} in {outcome.wall_s:.1f} s, {len(lines)} stderr "
        f"lines ({len(noise)} log lines)"
    )
    if RAY_CASES[case_id][1] is not None:
        assert outcome.code == 2, outcome.err[-3000:]
        errors = [line for line in lines if ERROR_LINE.match(line)]
        assert len(errors) == 1 and errors[0] == lines[-1], outcome.err[-3000:]
        assert re.search(RAY_CASES[case_id][1], errors[0]), errors[0]
        if on_s3:
            assert "s3://" in errors[0], errors[0]
        assert strays == [], strays
        # Refused by the scan pass, before the trainer: no run directory, no checkpoint, no model.
        if on_s3:
            assert _keys(client, bucket, f"cases/{case_id}/") == []
        else:
            assert not Path(out).exists() or list(Path(out).rglob("*")) == []
        return
    assert outcome.code == 0, outcome.err[-3000:]
    assert strays == [], strays
    summary = json.loads(outcome.out)
    assert (summary["rows"], summary["assigned"], summary["rejected"]) == (N_ROWS, N_ROWS - 6, 6)
    if on_s3:
        key = f"cases/{case_id}/out/r/{writer.MANIFEST_FILE}"
        manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    else:
        manifest = json.loads((Path(out) / "r" / writer.MANIFEST_FILE).read_text())
    assert manifest["rows"] == {"input": N_ROWS, "assigned": N_ROWS - 6, "rejected": 6}
    assert manifest["rejected_reasons"] == {
        "non-finite value": 3,
        "length 5, expected 8": 1,
        "length 9, expected 8": 1,
        "null": 1,
    }
    # (on S3 through the credentials ray_with_s3_credentials put in this process' environment)
    table = reader.read_committed(f"{out}/r", include_rejected=True)
    assert sorted(table["id"].to_pylist()) == list(range(N_ROWS))  # every row exactly once
    rejected = table.filter(table["reason"].is_valid())
    assert sorted(rejected["id"].to_pylist()) == [3, 10, 99, 150, 200, 251]
    assert rejected["cluster"].null_count == 6


def test_duplicated_ids_are_assigned_with_a_warning(ray_with_s3_credentials, world, tmp_path):
    """Issue 13: the same file given twice is assigned (every row), with one warning."""
    data = tmp_path / "twice"
    data.mkdir()
    for copy in ("a", "b"):
        shutil.copy(Path(world["good"]) / "part-00000.parquet", data / f"{copy}.parquet")
    rows = 2 * pq.read_metadata(data / "a.parquet").num_rows
    env = _ray_env(ray_with_s3_credentials, _base_env())
    argv = [a.format(**world, out=str(tmp_path / "out")) for a in _assign("{model}", str(data))]
    outcome = run_cli([*argv, "--workers", "1"], env, tmp_path)
    assert outcome.code == 0, outcome.err[-3000:]
    assert json.loads(outcome.out)["rows"] == rows
    warnings = [line for line in outcome.err_lines if "distinct values in" in line]
    assert len(warnings) == 1, outcome.err[-3000:]
    assert (
        f"hold {rows // 2} distinct values in {rows} rows: some ids are duplicated" in warnings[0]
    )
