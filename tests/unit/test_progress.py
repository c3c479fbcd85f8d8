"""The console of a ``tell`` job (issue #12): jobs/progress.py in a fresh process each time.

Quiet (the default): stderr gets the job's own lines only; what Python code, C code (a write
to file descriptor 2) and Ray's forwarded worker lines print goes to the log file, except
the lines a worker marked for the console. Verbose: everything on stderr too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys, warnings
    from jobs import progress
    progress.configure("train", verbose={verbose}, log_path=sys.argv[1])
    print("python chatter", file=sys.stderr, flush=True)
    os.write(2, b"[C++ chatter]\\n")
    warnings.warn("a deprecation", DeprecationWarning)
    logging.getLogger("ray.data").warning("ray data plan")
    logging.getLogger("tell.train").info("tell info record")
    logging.getLogger("tell.assign").warning("partition dt=1 changed")
    progress._route_forwarded({{"pid": 7, "actor_name": "RayTrainWorker",
        "lines": ["TrainingReport(...)", progress.MARK + "epoch 1/3  centers"]}})
    progress.emit("epoch 2/3  hidden off a terminal", live=True, keep=False)
    progress.line("done")
    progress.close()
    print('{{"summary": 1}}')
    """
)


def _run(tmp_path: Path, verbose: bool) -> tuple[list[str], str, str]:
    log = tmp_path / "job.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(verbose=verbose), str(log)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines(), done.stdout, log.read_text()


def test_quiet_console_shows_only_the_jobs_lines(tmp_path):
    lines, out, log = _run(tmp_path, verbose=False)
    assert lines == [
        "tell train: warning: partition dt=1 changed",
        "tell train: epoch 1/3  centers",
        "tell train: done",
    ]
    assert out.strip() == '{"summary": 1}'  # stdout untouched
    for text in ("python chatter", "[C++ chatter]", "a deprecation", "ray data plan",
                 "tell info record", "(RayTrainWorker pid=7) TrainingReport(...)",
                 "epoch 2/3  hidden off a terminal", "tell train: done"):  # fmt: skip
        assert text in log, text


def test_verbose_console_shows_everything(tmp_path):
    lines, _, log = _run(tmp_path, verbose=True)
    text = "\n".join(lines)
    for shown in ("python chatter", "[C++ chatter]", "ray data plan", "tell info record",
                  "tell train: done"):  # fmt: skip
        assert shown in text and shown in log, shown


def test_epoch_lines_and_stride():
    from jobs import progress

    assert progress.epoch_stride(30) == 3 and progress.epoch_stride(5) == 1
    history = [
        {"epoch": 0, "phase": "pretrain", "rec_loss": 0.5, "clu_loss": 0.1,
         "inertia_per_row": 1.0, "rows_per_s": 100.0, "epoch_s": 9.0},
        {"epoch": 1, "phase": "centers", "rec_loss": 0.4, "clu_loss": 0.02,
         "inertia_per_row": 0.3, "dead_centers": 2, "moved": 1, "rows_per_s": 5000.0,
         "epoch_s": 1.0},
    ]  # fmt: skip
    line = progress.epoch_line(1, 10, history)
    assert line.startswith("epoch 2/10  centers")
    assert "dead 2 moved 1" in line and "5,000 rows/s" in line
    assert "ETA 8 s" in line  # 8 epochs left x 1 s (the start-up epoch left out)
