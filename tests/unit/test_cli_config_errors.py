"""Config and usage errors of the ``tell`` CLI, in-process and without Ray (issue #6).

Every case must end as exit code 2 and exactly one line on stderr, ``tell <command>: error:
...``, naming the key (or flag) at fault; nothing on stdout; no traceback unless --debug.
The same promises through real subprocesses and storage: tests/integration/test_bad_inputs.py.
"""

from __future__ import annotations

import re

import pytest

from jobs import cli
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
    [pytest.param(*case[1:], id=case[0]) for case in YAML_CASES],
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
        (_TrainingFailed({1: RuntimeError("x"), 0: TellDataError("rank 0")}), "rank 0"),
        (_chained(), "in the context"),
        (RuntimeError("plain"), None),
    ],
)
def test_user_error_found_through_wrappers(exc, expected):
    found = cli._user_error(exc)
    assert (found and str(found)) == expected


def test_user_error_chain_with_a_cycle_terminates():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert cli._user_error(a) is None


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
    found = cli._user_error(remote(text))
    assert isinstance(found, TellDataError) and isinstance(found, TellError)
    assert str(found) == "Column 'e' has type string, which is not numeric."
    # Only Ray's exceptions are parsed; the names must be tell's error classes.
    assert cli._user_error(RuntimeError(text)) is None
    assert cli._user_error(remote("tell.errors.NoSuchError: x\ntell.errors.TellError: y")).args == (
        "y",
    )
