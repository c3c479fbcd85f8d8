"""What a job shows while it runs (issue #12): one line per stage or epoch on stderr, the job's
own summary, and the path of the full log file. Ray's chatter goes to that file; with
``--verbose`` it reaches the console too, as Ray prints it.

A job's output has three sources, and each has one route here:

1. **Whatever the driver process writes to stderr** (tell's and Ray's loggers, Ray Data's
   execution plans, warnings such as ``RayDeprecationWarning``, progress bars, the C++ log
   lines of Ray's core worker): :func:`configure` points file descriptor 2 at a pipe whose
   reader copies it into the log file only (quiet) or into the file and onto the console
   (verbose). tell's log records go to the file; those at WARNING and above also to the
   console.
2. **Lines Ray forwards from workers and actors** (``log_to_driver``: Ray Train's
   ``TrainingReport`` and "Checkpoint successfully created" lines, raylet errors):
   :func:`attach_ray` swaps Ray's printer of forwarded lines for one that writes them to the
   file and passes to the console only the lines a worker marked with :func:`emit` (the
   training loop's line per epoch).
3. **The job's own progress**: :func:`line` (driver) and :func:`emit` (workers) write one
   line, ``tell <command>: <text>``, on the console and into the file.

On a terminal an epoch line rewrites the previous epoch line in place (a live line); when
stderr is not a terminal (a file, a pipe, ``ray job submit``) every line stays. Ray Data's
progress bars are turned off unless ``--verbose``.

Without :func:`configure` (the library used from Python, the tests' in-process jobs) nothing
is redirected: :func:`line` logs at INFO on ``tell.progress``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger("tell.progress")

# A worker's line for the console starts with this mark (see emit and _route_forwarded).
MARK = "[tell-progress] "
_LIVE = "\x1b[2K\r"  # erase the terminal line, back to its start


class _State:
    command: str | None = None
    verbose = True
    console: TextIO = sys.__stderr__
    log_file: TextIO | None = None
    log_path: Path | None = None
    live_pending = False  # the last console line is a live one (no newline yet)
    stderr: _Stderr | None = None
    lock = threading.Lock()


_state = _State()


_DRAIN_MARK = b"\x00tell-drain\x00"


class _Stderr:
    """The process' file descriptor 2 of a configured job, pointed at a pipe: a thread
    copies what arrives into the log file, and to the console too when verbose. So every
    writer of stderr follows, Python's (Ray's log handlers, warnings, progress bars) and C
    code's (Ray's core worker logs to the descriptor)."""

    def __init__(self, verbose: bool) -> None:
        sys.stderr.flush()
        self.verbose = verbose
        self.console_fd = os.dup(2)
        self.read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.drained = threading.Event()
        self.thread = threading.Thread(target=self._copy, name="tell-stderr", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            marked = _DRAIN_MARK in chunk
            text = chunk.replace(_DRAIN_MARK, b"").decode("utf-8", "replace")
            with _state.lock:
                if _state.log_file is not None:
                    _state.log_file.write(text)
                if self.verbose and text:
                    _end_live_line()
                    _state.console.write(text)
                    _state.console.flush()
            if marked:
                self.drained.set()

    def drain(self, timeout_s: float = 1.0) -> None:
        """Wait (at most ``timeout_s``) until what was written to stderr so far reached the
        log: a mark written behind it comes back through the copying thread (waiting for an
        empty pipe alone lost the chunk the thread had read but not yet written)."""
        sys.stderr.flush()
        self.drained.clear()
        os.write(2, _DRAIN_MARK)  # one write below PIPE_BUF: atomic, never split
        self.drained.wait(timeout_s)


class _ConsoleHandler(logging.Handler):
    """tell's records at WARNING and above, as one line each on the console."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_console(f"{_prefix()}{record.levelname.lower()}: {record.getMessage()}")
        except Exception:
            self.handleError(record)


def default_log_path(command: str) -> Path:
    """``$TELL_LOG_DIR`` (else the system's temp dir ``/tell-logs``)
    ``/<command>-<time>-<pid>.log``."""
    root = Path(os.environ.get("TELL_LOG_DIR") or Path(tempfile.gettempdir()) / "tell-logs")
    return root / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def configure(command: str, *, verbose: bool, log_path: str | Path | None = None) -> Path:
    """Route this process' output for a ``tell <command>`` run; returns the log file's path.

    Call once, first thing, before Ray is imported (its handlers then see the redirected
    ``sys.stderr``). The console is the original stderr: the CLI's error line goes there
    (:func:`console`).
    """
    path = Path(log_path) if log_path else default_log_path(command)
    path.parent.mkdir(parents=True, exist_ok=True)
    _state.command, _state.verbose = command, verbose
    _state.log_file = open(path, "a", encoding="utf-8", buffering=1)
    _state.log_path = path
    _state.stderr = _Stderr(verbose)
    _state.console = os.fdopen(_state.stderr.console_fd, "w", encoding="utf-8", buffering=1)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    # verbose: timestamped records on the console, as before issue 12 (the redirected
    # stderr copies them into the file); quiet: into the file only
    handler = logging.StreamHandler(sys.stderr if verbose else _state.log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    root.addHandler(handler)
    for name in ("tell", "jobs"):
        logging.getLogger(name).setLevel(logging.INFO)
    if not verbose:
        logging.getLogger("tell").addHandler(_ConsoleHandler(logging.WARNING))
        logging.getLogger("jobs").addHandler(_ConsoleHandler(logging.WARNING))
    logging.getLogger("tell.progress").propagate = False  # written by _write_console itself
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the file
    return path


def configured() -> bool:
    return _state.command is not None


def log_path() -> Path | None:
    return _state.log_path


def console() -> TextIO:
    """The console stream (the original stderr; ``sys.stderr`` when not configured): for
    the CLI's one error line."""
    return _state.console if configured() else sys.stderr


def verbose() -> bool:
    return _state.verbose


def ray_init_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``ray.init`` (workers' lines are forwarded, then routed)."""
    return {"log_to_driver": True}


def attach_ray() -> None:
    """After ``ray.init``: route forwarded worker lines (source 2) and turn Ray Data's
    progress bars off unless verbose. A no-op for an unconfigured process."""
    if not configured():
        return
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = _state.verbose
    ctx.print_on_execution_start = _state.verbose
    if _state.verbose:
        return
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # pragma: no cover - a Ray without it: forwarded lines stay as they are
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("tell_route_logs", _route_forwarded)


def _route_forwarded(data: dict[str, Any]) -> None:
    """Ray's forwarded lines: all into the file (with their origin), marked ones also to the
    console."""
    name = data.get("actor_name") or data.get("task_name") or "worker"
    origin = f"({name} pid={data.get('pid')})"
    with _state.lock:
        if _state.log_file is not None:
            for text in data.get("lines", []):
                _state.log_file.write(f"{origin} {text}\n")
    for text in data.get("lines", []):
        at = text.find(MARK)
        if at >= 0:
            _show(text[at + len(MARK) :])


def _prefix() -> str:
    return f"tell {_state.command}: " if _state.command else "tell: "


def _end_live_line() -> None:
    if _state.live_pending:
        _state.console.write("\n")
        _state.live_pending = False


def _write_console(text: str, *, live: bool = False) -> None:
    with _state.lock:
        if _state.log_file is not None:
            _state.log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        tty = _state.console.isatty()
        if live and tty:
            _state.console.write(_LIVE + text)
            _state.live_pending = True
        else:
            _end_live_line()
            _state.console.write(text + "\n")
        _state.console.flush()


_LIVE_TAG, _KEEP_TAG = "live:", "keep:"


def _show(payload: str) -> None:
    """A progress line. ``payload`` may start with ``live:`` (a terminal rewrites the line
    in place), then ``keep:`` (a console that is not a terminal prints it; without it, such
    a console skips the line: at most a few epoch lines per run in a log)."""
    live = payload.startswith(_LIVE_TAG)
    text = payload[len(_LIVE_TAG) :] if live else payload
    keep = not live or text.startswith(_KEEP_TAG)
    text = text[len(_KEEP_TAG) :] if live and keep else text
    if not configured():
        logger.info("%s", text)
        return
    if live and not keep and not _state.console.isatty():
        with _state.lock:
            if _state.log_file is not None:
                _state.log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        return
    _write_console(_prefix() + text, live=live)


def line(text: str) -> None:
    """One progress line of the driver: ``tell <command>: text`` on the console."""
    _show(text)


def emit(text: str, *, live: bool = False, keep: bool = True) -> None:
    """One progress line from a Ray worker (or the driver): a worker prints it with
    :data:`MARK` and the driver's router shows it. ``live``: a terminal rewrites it in
    place; ``keep`` False: a console that is not a terminal skips it."""
    payload = (_LIVE_TAG + (_KEEP_TAG if keep else "") if live else "") + text
    if not _in_ray_worker():  # the driver process itself
        _show(payload)
        return
    print(MARK + payload, file=sys.__stderr__, flush=True)


def epoch_stride(total: int, lines: int = 10) -> int:
    """Every how many epochs a console that is not a terminal gets an epoch line."""
    return max(1, -(-total // lines))


def _in_ray_worker() -> bool:
    worker = sys.modules.get("ray._private.worker")
    return worker is not None and worker.global_worker.mode == worker.WORKER_MODE


def epoch_line(epoch: int, total: int, history: list[dict[str, Any]]) -> str:
    """The console line of a finished training epoch (``history[-1]`` is its summary): the
    phase, the loss parts, the inertia, dead and moved centers, rows/s and an ETA from the
    mean epoch time so far."""
    entry = history[-1]
    parts = [f"epoch {epoch + 1}/{total}", str(entry.get("phase", ""))]
    for key, label in (("clu_loss", "clu"), ("rec_loss", "rec"), ("inertia_per_row", "inertia")):
        value = entry.get(key)
        if isinstance(value, (int, float)) and (key != "rec_loss" or value):
            parts.append(f"{label} {value:.4g}")
    if entry.get("phase") != "pretrain":
        parts.append(f"dead {entry.get('dead_centers', 0)} moved {entry.get('moved', 0)}")
    parts.append(f"{entry.get('rows_per_s', 0):,.0f} rows/s")
    times = [h["epoch_s"] for h in history if isinstance(h.get("epoch_s"), (int, float))]
    times = times[1:] or times  # the first epoch carries the start-up
    left = max(0, total - epoch - 1)
    if times and left:
        parts.append(f"ETA {left * sum(times) / len(times):.0f} s")
    return "  ".join(parts)


def close() -> None:
    """End a live line and flush the log (the CLI calls it before its last lines)."""
    if _state.stderr is not None:
        _state.stderr.drain()
    with _state.lock:
        _end_live_line()
        if _state.log_file is not None:
            _state.log_file.flush()
