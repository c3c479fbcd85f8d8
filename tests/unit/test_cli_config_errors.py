"""Config and usage errors of the ``tell`` CLI, in-process and without Ray (issue #6).

Every case must end as exit code 2 and exactly one line on stderr, ``tell <command>: error:
...``, naming the key (or flag) at fault; nothing on stdout; no traceback unless --debug.
The same promises through real subprocesses and storage: tests/integration/test_bad_inputs.py.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

from jobs import cli, runtime
from jobs.config import load_job
from tell.errors import TellCheckpointError, TellConfigError, TellDataError, TellError

_IO = "data: d\nout: o\n"  # the train job's required keys, for cases about another key

# (id, command, YAML text, extra flags, regex the error line must match)
YAML_CASES = [
    ("unknown-key-train", "train", _IO + "k: 3\nbogus: 1\n", [], r"Unknown key 'bogus'"),
    ("unknown-key-assign", "assign", "model: m\nkk: 3\n", [], r"Unknown key 'kk'"),
    ("unknown-key-evaluate", "evaluate", "assignments: a\nlabel: y\n", [], r"Unknown key 'label'"),
    ("unknown-key-explain", "explain", "model: m\nsample: 5\n", [], r"Unknown key 'sample'"),
    ("type-int-str", "train", _IO + "k: five\n", [], r"'k' must be an integer\. Got str 'five'"),
    ("type-int-float", "train", _IO + "k: 3\nepochs: 2.5\n", [], r"'epochs' must be an integer"),
    ("type-int-bool", "train", _IO + "k: true\n", [], r"'k' must be an integer\. Got bool"),
    ("type-int-nan", "train", _IO + "k: .nan\n", [], r"'k' must be an integer"),
    ("type-float-str", "train", _IO + "k: 3\nlr: fast\n", [], r"'lr' must be a number"),
    ("type-float-nan", "train", _IO + "k: 3\nlr: .nan\n", [], r"'lr' must be in \(0\.0, inf\]"),
    ("type-bool", "train", _IO + "k: 3\nrepair: maybe\n", [], r"'repair' must be true or false"),
    ("type-list", "train", _IO + "k: 3\nhidden_dims: 5\n", [], r"'hidden_dims' must be a list"),
    ("type-list-item", "train", _IO + "k: 3\nhidden_dims: [8, x]\n", [], r"'hidden_dims\[1\]'"),
    ("type-str", "train", "k: 3\ndata: 5\nout: o\n", [], r"'data' must be a string"),
    ("type-id-columns", "assign", "model: m\ndata: d\nout: o\nid_columns: id\n", [], "id_columns"),
    ("choice", "train", _IO + "k: 3\nencoder: resnet\n", [], r"'encoder' must be one of"),
    ("k-below-2", "train", _IO + "k: 1\n", [], r"'k' must be in \[2, inf\]\. Got 1"),
    ("k-negative", "train", _IO + "k: -4\n", [], r"'k' must be in \[2, inf\]"),
    ("workers-0", "train", _IO + "k: 3\nworkers: 0\n", [], r"'workers' must be in \[1, inf\]"),
    ("batch-size-0", "assign", "model: m\ndata: d\nout: o\nbatch_size: 0\n", [], "batch_size"),
    ("sample-rows-0", "explain", "model: m\ndata: d\nout: o\nsample_rows: 0\n", [], "sample_rows"),
    ("missing-k", "train", _IO + "epochs: 3\n", [], r"needs the key 'k'"),
    ("missing-data", "train", "k: 3\nout: o\n", [], r"'data' key is required \(flag --data\)"),
    ("not-a-mapping", "train", "- k\n- 3\n", [], r"must hold a mapping"),
    ("invalid-yaml", "train", "k: [3\n", [], r"is not valid YAML"),
    ("empty-file", "train", "", [], r"'data' key is required"),
    ("flag-overrides-file", "train", _IO + "k: 3\n", ["--k", "1"], r"'k' must be in \[2, inf\]"),
]

_ASSIGN = "model: m\ndata: d\nout: o\n"
_EXPLAIN = "model: m\ndata: d\nout: o\n"
_FRACTION = r"'gpus_per_worker' must be a fraction below 1 or a whole number\. Got 1\.5"
# Values of the right type that no job can run with.
IMPOSSIBLE_CASES = [
    ("evaluate-label-empty", "evaluate", "assignments: a\nlabel_column: ''\n", [],
     r"'label_column' must be a non-empty column"),
    ("evaluate-label-blank-flag", "evaluate", "", ["--assignments", "a", "--label-column", " "],
     r"'label_column' must be a non-empty column"),
    ("evaluate-id-empty", "evaluate", "assignments: a\nid_column: ''\n", [], r"'id_column'"),
    ("evaluate-label-is-id", "evaluate", "assignments: a\nlabel_column: id\n", [],
     r"'label_column' and the 'id_column' must differ; both are 'id'"),
    ("evaluate-label-is-id-flags", "evaluate", "assignments: a\n",
     ["--label-column", "key", "--id-column", "key"], r"'label_column' and the 'id_column'"),
    ("evaluate-out-empty", "evaluate", "assignments: a\nout: ''\n", [], r"'out' must be"),
    ("explain-label-empty", "explain", _EXPLAIN + "label_column: ''\n", [],
     r"'label_column' must be a non-empty column"),
    ("explain-text-empty", "explain", _EXPLAIN + "text_column: ''\n", [], r"'text_column'"),
    ("explain-column-empty", "explain", _EXPLAIN + "column: ''\n", [], r"'column' must be"),
    ("assign-id-columns-empty", "assign", _ASSIGN + "id_columns: []\n", [],
     r"'id_columns' must name at least one column"),
    ("assign-id-columns-blank", "assign", _ASSIGN + "id_columns: [id, '']\n", [],
     r"'id_columns' must be a non-empty column"),
    ("assign-id-columns-repeat", "assign", _ASSIGN + "id_columns: [id, id]\n", [],
     r"'id_columns' repeat a column"),
    ("assign-column-empty", "assign", _ASSIGN + "column: ''\n", [], r"'column' must be"),
    ("train-column-empty", "train", _IO + "k: 3\ncolumn: ''\n", [], r"'column' must be"),
    ("train-gpus-1.5", "train", _IO + "k: 3\ngpus_per_worker: 1.5\n", [], _FRACTION),
    ("assign-gpus-1.5", "assign", _ASSIGN, ["--gpus-per-worker", "1.5"], _FRACTION),
    ("train-gpus-negative", "train", _IO + "k: 3\ngpus_per_worker: -1\n", [],
     r"'gpus_per_worker' must be in \[0\.0, inf\]"),
    ("train-sample-below-k", "train", _IO + "k: 10\ninit_sample_rows: 5\n", [],
     r"'init_sample_rows' \(5\) must be at least 'k' \(10\)"),
    ("train-sample-below-k-flag", "train", _IO + "init_sample_rows: 100\n", ["--k", "1024"],
     r"'init_sample_rows' \(100\) must be at least 'k' \(1024\)"),
    ("train-materialize", "train", _IO + "k: 3\nmaterialize: sometimes\n", [],
     r"'materialize' must be one of \['auto', 'always', 'never'\]"),
    ("train-levels-2-mlp", "train", _IO + "k: 3\n", ["--levels", "2", "--encoder", "mlp"],
     r"levels: 2 needs the identity encoder .* got encoder 'mlp'"),
    ("train-levels-3", "train", _IO + "k: 3\nlevels: 3\n", [], r"'levels' must be in \[1, 2\]"),
    ("train-levels-2-gpu", "train", _IO + "k: 3\nlevels: 2\ngpus_per_worker: 1\n", [],
     r"levels: 2 fits on CPUs; 'gpus_per_worker' must be 0"),
    ("train-n-coarse-one-level", "train", _IO + "k: 3\nn_coarse: 2\n", [],
     r"'n_coarse' applies to two-level models only"),
    ("train-n-coarse-above-k", "train", _IO + "k: 9\nlevels: 2\n", ["--n-coarse", "10"],
     r"'n_coarse' must be in \[1, 9\]\. Got 10"),
]  # fmt: skip

# tell demo: every key has a default, so an empty file is valid (checked below).
DEMO_CASES = [
    ("demo-unknown-key", "demo", "datasets: digits\n", [], r"Unknown key 'datasets'"),
    ("demo-dataset", "demo", "dataset: cifar\n", [],
     r"'dataset' must be one of \['auto', 'digits', 'mnist'\]\. Got 'cifar'"),
    ("demo-dataset-flag", "demo", "", ["--dataset", "imagenet"], r"'dataset' must be one of"),
    ("demo-epochs-0", "demo", "epochs: 0\n", [], r"'epochs' must be in \[1, inf\]"),
    ("demo-epochs-type", "demo", "epochs: many\n", [], r"'epochs' must be an integer"),
    ("demo-workers-0", "demo", "", ["--workers", "0"], r"'workers' must be in \[1, inf\]"),
    ("demo-cpus-0", "demo", "cpus_per_worker: 0\n", [], r"'cpus_per_worker' must be in \(0"),
    ("demo-gpus-1.5", "demo", "gpus_per_worker: 1.5\n", [], _FRACTION),
    ("demo-workdir-empty", "demo", "workdir: ''\n", [], r"'workdir' must be a non-empty"),
    ("demo-workdir-s3", "demo", "", ["--workdir", "s3://bucket/demo"],
     r"'workdir' must be a local directory .* Got 's3://bucket/demo'"),
]  # fmt: skip

_TRAVERSAL = ["../x", "a/../../b", "..", "/etc/cron.d/x", "a/b", ".hidden", "a\\b", "x" * 129, ""]
TRAVERSAL_CASES = [
    *[("train", "name", value) for value in _TRAVERSAL],
    *[("assign", "run_id", value) for value in _TRAVERSAL],
]


def _run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"tell {command}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("command", "text", "flags", "pattern"),
    [pytest.param(*case[1:], id=case[0]) for case in YAML_CASES + IMPOSSIBLE_CASES + DEMO_CASES],
)
def test_bad_yaml_config_is_one_line_naming_the_key(
    tmp_path, capsys, command, text, flags, pattern
):
    config = tmp_path / "job.yaml"
    config.write_text(text)
    code, out, err = _run([command, "--config", str(config), *flags], capsys)
    assert code == cli.EXIT_USER_ERROR
    assert out == ""
    line = _one_error_line(err, command)
    assert re.search(pattern, line), line


@pytest.mark.parametrize(
    ("command", "values"),
    [
        ("train", {"data": "d", "out": "o", "k": 10, "init_sample_rows": 10}),
        ("train", {"data": "d", "out": "o", "k": 3, "gpus_per_worker": 0.5}),
        ("train", {"data": "d", "out": "o", "k": 3, "gpus_per_worker": 2}),
        ("train", {"data": "d", "out": "o", "k": 9, "levels": 2, "n_coarse": 9}),
        ("assign", {"model": "m", "data": "d", "out": "o", "gpus_per_worker": 1.0}),
        ("assign", {"model": "m", "data": "d", "out": "o", "id_columns": ["id", "dt"]}),
        ("evaluate", {"assignments": "a", "label_column": "y", "id_column": "key"}),
        ("explain", {"model": "m", "data": "d", "out": "s3://b/r", "label_column": "label"}),
        ("demo", {}),
        ("demo", {"dataset": "digits", "workdir": "w", "epochs": 1, "workers": 1}),
    ],
)
def test_possible_values_next_to_the_impossible_ones_load(command, values):
    assert load_job(command, None, values) is not None


def test_missing_config_file(tmp_path, capsys):
    code, out, err = _run(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and out == ""
    assert "Cannot read config file" in _one_error_line(err, "train")


@pytest.mark.parametrize(("command", "key", "value"), TRAVERSAL_CASES)
def test_run_ids_and_names_cannot_traverse(tmp_path, capsys, command, key, value):
    """Run ids and names become path components under the output root: refused up front."""
    config = tmp_path / "job.yaml"
    lines = {"train": "k: 3\ndata: d\nout: o\n", "assign": "model: m\ndata: d\nout: o\n"}
    config.write_text(lines[command] + f"{key}: {value!r}\n".replace("'", '"'))
    code, out, err = _run([command, "--config", str(config)], capsys)
    assert code == 2 and out == ""
    line = _one_error_line(err, command)
    assert f"The {key!r} must be 1-128 characters" in line, line
    assert list(tmp_path.iterdir()) == [config]  # nothing created


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["train", "--k", "abc"], r"argument --k: invalid int value: 'abc'"),
        (["train", "--lr", "fast"], r"argument --lr: invalid float value"),
        (["assign", "--bogus", "1"], r"unrecognized arguments: --bogus 1"),
        (["train", "--repair", "yes"], r"unrecognized arguments: yes"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, pattern):
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.match(r"tell( \w+)?: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert "usage:" not in err


def test_missing_command_is_one_line(capsys):
    code, _, err = _run([], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("tell: error:")


def test_n_init_refused_before_any_data_is_read(tmp_path, capsys):
    """Distributed training has no restarts: refused before touching the (missing) data."""
    code, _, err = _run(
        ["train", "--k", "3", "--n-init", "5", "--data", str(tmp_path / "x"), "--out", "o"],
        capsys,
    )
    assert code == 2
    assert "'n_init' must be 1" in _one_error_line(err, "train")


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_shows_the_traceback_and_keeps_the_exit_code(capsys, position):
    argv = ["train", "--config", "/nonexistent/job.yaml"]
    argv = ["--debug", *argv] if position == "before" else [*argv, "--debug"]
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert "Traceback (most recent call last)" in err
    assert "TellConfigError" in err
    assert err.splitlines()[-1].startswith("tell train: error: Cannot read config file")


def test_internal_errors_are_one_line_with_exit_1(monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(cli, "load_job", boom)
    code, out, err = _run(["evaluate", "--assignments", "a"], capsys)
    assert code == cli.EXIT_INTERNAL_ERROR and out == ""
    lines = err.splitlines()
    assert lines == [
        "tell evaluate: internal error: RuntimeError: first line "
        "(run with --debug for the traceback)"
    ]


# ---------------------------------------------------------------- finding the user error


class _Wrapper(Exception):
    """Like ray.exceptions.RayTaskError: the original exception in ``.cause``."""

    def __init__(self, cause):
        super().__init__("wrapped")
        self.cause = cause


class _TellWrapper(TellDataError):
    """Like ray.exceptions.RayTaskError(TellDataError): a subclass of the error it carries
    in ``.cause``, whose own text is a traceback."""

    def __init__(self, cause):
        super().__init__("Traceback (most recent call last): ...")
        self.cause = cause


class _TrainingFailed(Exception):
    """Like Ray Train's TrainingFailedError: failures per worker rank."""

    def __init__(self, failures):
        super().__init__("training failed")
        self.worker_failures = failures


def _chained() -> BaseException:
    try:
        try:
            raise TellDataError("in the context")
        except TellDataError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TellConfigError("direct"), "direct"),
        (_Wrapper(TellCheckpointError("in cause")), "in cause"),
        (_Wrapper(_Wrapper(TellDataError("deep"))), "deep"),
        (_TellWrapper(TellDataError("the innermost")), "the innermost"),
        (_TrainingFailed({1: RuntimeError("x"), 0: TellDataError("rank 0")}), "rank 0"),
        (_chained(), "in the context"),
        (RuntimeError("plain"), None),
    ],
)
def test_user_error_found_through_wrappers(exc, expected):
    found = runtime.user_error(exc)
    assert (found and str(found)) == expected


def test_user_error_chain_with_a_cycle_terminates():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert runtime.user_error(a) is None


def test_user_error_from_ray_data_traceback_text():
    """Ray Data re-raises task errors with only the text of the original exception."""
    remote = type("RayTaskError(UserCodeException)", (Exception,), {"__module__": "ray.exceptions"})
    text = (
        "ray::ReadFiles->MapBatches(FeatureBatches)() (pid=1, ip=127.0.0.1)\n"
        '  File "/x/jobs/data.py", line 160, in __call__\n'
        "tell.errors.TellDataError: Column 'e' has type string, which is not numeric.\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block."
    )
    found = runtime.user_error(remote(text))
    assert isinstance(found, TellDataError) and isinstance(found, TellError)
    assert str(found) == "Column 'e' has type string, which is not numeric."
    # Only Ray's exceptions are parsed; the names must be tell's error classes.
    assert runtime.user_error(RuntimeError(text)) is None
    assert runtime.user_error(
        remote("tell.errors.NoSuchError: x\ntell.errors.TellError: y")
    ).args == ("y",)


# ---------------------------------------------------------------- help

# What each job cannot run without, written out here (not taken from the code that makes
# the help), and checked against the jobs' behaviour below.
MINIMAL_CONFIGS = {
    "train": {"data": "d", "out": "o", "k": 3},
    "assign": {"model": "m", "data": "d", "out": "o"},
    "evaluate": {"assignments": "a"},
    "explain": {"model": "m", "data": "d", "out": "o"},
    "demo": {},
}
ENUMERATED_KEYS = {
    "train": ["materialize", "encoder", "optimizer", "init"],
    "demo": ["dataset"],
}


def _sub_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flag_help(command: str) -> dict[str, str]:
    """--flag -> its help text, for every option of ``tell <command>``."""
    out = {}
    for action in _sub_parsers()[command]._actions:
        for flag in action.option_strings:
            out[flag] = action.help or ""
    return out


def test_the_minimal_configs_are_exactly_the_required_keys():
    """Each minimal config loads; without any one of its keys the job refuses, naming it."""
    assert set(MINIMAL_CONFIGS) == set(cli.COMMANDS)
    for command, values in MINIMAL_CONFIGS.items():
        assert load_job(command, None, dict(values)) is not None
        for key in values:
            rest = {k: v for k, v in values.items() if k != key}
            with pytest.raises(TellConfigError, match=f"'{key}'"):
                load_job(command, None, rest)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_flag_has_a_description_and_required_ones_say_so(command):
    helps = _flag_help(command)
    assert {"-h", "--config", "--debug"} <= set(helps)
    for flag, text in helps.items():
        description = re.sub(r"\s*\((default: .*|required)\)$", "", text.strip(), flags=re.S)
        assert len(description) > 3, f"tell {command} {flag} has no description: {text!r}"
    required = {"--" + key.replace("_", "-") for key in MINIMAL_CONFIGS[command]}
    for flag, text in helps.items():
        assert ("(required)" in text) == (flag in required), f"tell {command} {flag}: {text!r}"
    page = _sub_parsers()[command].format_help()
    for flag in required:
        assert flag in page.split("options:")[0], f"the description lists {flag} as required"
    assert page.count("(required)") == len(required)


@pytest.mark.parametrize(
    ("command", "key"), [(c, k) for c, keys in ENUMERATED_KEYS.items() for k in keys]
)
def test_enumerated_keys_list_their_allowed_values(command, key):
    """The values listed in --help are the ones the job accepts (taken from its error)."""
    values = {**MINIMAL_CONFIGS[command], key: "not-a-valid-value"}
    with pytest.raises(TellConfigError, match=f"'{key}' must be one of") as refused:
        load_job(command, None, values)
    allowed = re.search(r"must be one of (\[.*?\])", str(refused.value)).group(1)
    allowed = json.loads(allowed.replace("'", '"'))
    text = _flag_help(command)["--" + key.replace("_", "-")]
    missing = [value for value in allowed if value not in text]
    assert not missing, f"tell {command} --{key} help lacks {missing}: {text!r}"
    for value in allowed:  # and each is accepted
        extra = {"image_shape": [8, 8, 1]} if value == "conv" else {}
        assert load_job(command, None, {**MINIMAL_CONFIGS[command], key: value, **extra})


def test_explain_out_help_matches_what_it_accepts():
    text = _flag_help("explain")["--out"]
    assert "s3://" in text and "local directory for" not in text


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    page = capsys.readouterr().out
    for command, text in cli.COMMANDS.items():
        assert command in page and text.split(":")[0] in " ".join(page.split())


# ---------------------------------------------------------------- what a command prints


def test_demo_ends_with_its_table_and_other_commands_print_json(monkeypatch, capsys):
    """The demo's table is the last thing on stdout (no JSON after it); the others' JSON stays."""
    import jobs.demo
    import jobs.report.evaluate

    summary = {
        "data": "/w/data/digits", "rows": 1797, "classes": 10, "model": "/w/store/model",
        "assignments": "/w/store/assignments/demo", "report": "/w/report/report.html",
        "summary": "/w/summary.json", "encoder": "mlp", "metrics": {"acc": 0.9},
        "identity_metrics": {"acc": 0.8},
    }  # fmt: skip
    monkeypatch.setattr(jobs.demo, "main", lambda job: summary)
    monkeypatch.setattr(jobs.report.evaluate, "main", lambda job: {"acc": 0.5, "n_rows": 3})
    code, out, _ = _run(["demo", "--workdir", "w"], capsys)
    assert code == 0 and out == jobs.demo.format_report(summary) + "\n"
    assert out.splitlines()[-1].split() == ["acc", "0.9000", "0.8000"] and "/w/store/model" in out
    assert out.splitlines()[-2].split() == ["metric", "TELL", "mlp", "identity", "(k-means)"]
    code, out, _ = _run(["evaluate", "--assignments", "a"], capsys)
    assert code == 0 and json.loads(out) == {"acc": 0.5, "n_rows": 3}


# Run as the command: a job whose libraries print (Python's print, and a write to file
# descriptor 1 as Ray's C++ core and its log thread do) still leaves only the JSON on stdout.
_NOISY_COMMAND = """
import os, sys
import jobs.report.evaluate
from jobs import cli

def noisy(job):
    print("(raylet) Raylet is terminated")
    sys.stdout.flush()
    os.write(1, b"[core_worker.cc] written to the descriptor\\n")
    return {"acc": 0.5}

jobs.report.evaluate.main = noisy
sys.argv = ["tell", "evaluate", "--assignments", "a"]
sys.exit(cli.main())
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_as_a_command_stdout_carries_only_the_summary(verbose):
    """Issue 13: `tell train ... | python -m json.tool` works even when Ray prints. Quiet, the
    noise goes to the log file (issue 12); with --verbose, to stderr; never to stdout."""
    import subprocess
    import sys
    from pathlib import Path

    command = _NOISY_COMMAND.replace(
        '"evaluate"', '"--verbose", "evaluate"' if verbose else '"evaluate"'
    )
    done = subprocess.run(
        [sys.executable, "-c", command], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"acc": 0.5}, done.stdout
    log = re.search(r"full log: (\S+)", done.stderr)
    assert log, done.stderr
    if not verbose:  # issue 12: quiet, none of the noise reaches the console
        assert "Raylet" not in done.stderr and "descriptor" not in done.stderr, done.stderr
    for where in [Path(log.group(1)).read_text(), *([done.stderr] if verbose else [])]:
        assert "(raylet) Raylet is terminated" in where
        assert "written to the descriptor" in where
