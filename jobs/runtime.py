"""Ray for every job: starting or joining a cluster the same way, and the one rule that finds
the user's error behind Ray's wrappers.

Importing this module sets Ray's environment defaults (before Ray is imported anywhere in
the process); it never imports Ray itself.
"""

from __future__ import annotations

import os
import re
import socket
import time

from jobs import progress
from tell import errors as tell_errors
from tell.errors import TellConfigError, TellError

# Set before Ray is imported anywhere in the process.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Train's controller polls its workers this often (Ray's default: 2 s). Every fit()
# waits up to one period to see that training ended; on a local cluster (which inherits
# this environment) 0.5 s saves seconds per job at a negligible cost.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# A Ray started by the job runs on this machine without a dashboard, so two of Ray Train's
# per-run services have nothing to do there: the preemption watcher (an actor per run that
# polls for cloud nodes being drained) and the metrics callbacks (they export to the
# dashboard's Prometheus agent). Measured on 2 cores, 4 runs each way of 4 epochs on 6,000
# rows: 41 instead of 45 CPU-seconds per run, about 1 s less wall time (of ~23 s, most of it
# Ray Train starting its processes). Both are read from the driver's environment (Ray Train
# propagates it to its controller), so a joined cluster keeps Ray's defaults.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


class ClusterError(TellError):
    """The Ray cluster cannot be reached, or cannot run the job (it stopped progressing)."""


# How long a job waits for the cluster named by RAY_ADDRESS to accept a connection: long
# enough for a head node that is still starting, short enough that a mistyped address in a
# cron job fails within about half a minute instead of hanging in Ray's retries.
CONNECT_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 3.0  # one TCP connection attempt


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it) or start a local one.

    Joining is bounded: the address's port must accept a TCP connection within
    :data:`CONNECT_TIMEOUT_S` (Ray itself retries a closed port for minutes), else
    :class:`ClusterError` with one line naming the address.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        probe_address(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(
                f"Cannot join the Ray cluster at RAY_ADDRESS={address} ({one_line(exc)}). "
                "Check RAY_ADDRESS, or unset it to run on a local Ray started by the job."
            ) from None
    else:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(
            address="local",
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"worker_process_setup_hook": quiet_dashboardless_workers},
        )
    progress.attach_ray()  # forwarded worker lines: to the log file, progress to the console


def probe_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`ClusterError` unless ``address`` (``host:port``, ``ray://host:port``)
    accepts a TCP connection within ``timeout_s``; ``auto`` is left to Ray (it reads the
    address of the cluster started on this machine from Ray's temp directory)."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(
            f"RAY_ADDRESS={address} is not an address of a Ray cluster; expected HOST:PORT "
            "(the head node's GCS port, 6379 by default), ray://HOST:PORT or auto."
        )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), _PROBE_TIMEOUT_S):
                return
        except OSError as exc:  # refused, unreachable, unknown host, timed out
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() + 1.0 >= deadline:
            raise ClusterError(
                f"Cannot reach the Ray cluster at RAY_ADDRESS={address}: {reason} for "
                f"{timeout_s:.0f} s. Check RAY_ADDRESS (the head node's address and GCS "
                "port), or unset it to run on a local Ray started by the job."
            )
        time.sleep(1.0)


def require_shared_paths(paths: dict[str, str], shared: bool) -> None:
    """Refuse local paths (``{flag: path}``) on a cluster of more than one node, unless
    ``shared`` says they are on a filesystem every node mounts (each node would otherwise
    read and write its own disk). Call after :func:`ensure_ray`."""
    import ray

    local = {flag: path for flag, path in paths.items() if path and "://" not in path}
    if shared or not local:
        return
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if nodes > 1:
        flag, path = next(iter(local.items()))
        raise TellConfigError(
            f"--{flag} {path} is a local path, but the Ray cluster has {nodes} nodes: each "
            "node would read and write its own disk. Use object storage (s3://...), or set "
            "shared_filesystem: true (--shared-filesystem) if the path is on a filesystem "
            "every node mounts at the same place."
        )


# Ray Train's placement-group cleaner asks the State API, which needs the dashboard, whether
# the controller is alive: on a local cluster started without one it warns every second.
_DASHBOARD_ONLY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_dashboardless_workers() -> None:
    """Worker setup hook for local clusters: silence warnings about the missing dashboard."""
    import logging

    for name in _DASHBOARD_ONLY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------------ the user's error


def user_error(exc: BaseException) -> TellError | None:
    """The TellError behind ``exc``, looking through Ray's wrappers and exception chains.

    Followed: ``cause`` (Ray's RayTaskError), ``__cause__``, ``__context__`` and
    ``worker_failures`` (Ray Train's TrainingFailedError). A RayTaskError subclasses the
    error it carries but its text is a traceback, so a TellError whose ``cause`` is a
    TellError too is passed over for that cause: the innermost one is returned. When only
    Ray's exceptions are left, their text is searched for ``tell.errors.<Name>: message``
    (Ray Data keeps nothing but the traceback text of a task's exception).
    """
    seen: set[int] = set()
    stack: list[object] = [exc]
    remote: list[BaseException] = []
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(current, TellError) and not isinstance(cause, TellError):
            return current
        if type(current).__module__.startswith("ray."):
            remote.append(current)
        stack += [
            cause,
            current.__cause__,
            current.__context__,
            *getattr(current, "worker_failures", {}).values(),
        ]
    return next(filter(None, map(_user_error_from_text, remote)), None)


# Ray Data re-raises a task's exception as RayTaskError(UserCodeException) whose chain no
# longer holds the original object, only its traceback text: "tell.errors.TellDataError: ...".
_REMOTE_TELL_ERROR = re.compile(r"^tell\.errors\.(\w+): (.+)$", re.MULTILINE)


def _user_error_from_text(exc: BaseException) -> TellError | None:
    for name, message in _REMOTE_TELL_ERROR.findall(str(exc)):
        cls = getattr(tell_errors, name, None)
        if isinstance(cls, type) and issubclass(cls, TellError):
            return cls(message.strip())
    return None


def one_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type's name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
