"""Ray for every job: starting or joining a cluster the same way, and the one rule that finds
the user's error behind Ray's wrappers.

Importing this module sets Ray's environment defaults (before Ray is imported anywhere in
the process); it never imports Ray itself.
"""

from __future__ import annotations

import os
import re

from jobs import progress
from tell import errors as tell_errors
from tell.errors import TellError

# Set before Ray is imported anywhere in the process.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Train's controller polls its workers this often (Ray's default: 2 s). Every fit()
# waits up to one period to see that training ended; on a local cluster (which inherits
# this environment) 0.5 s saves seconds per job at a negligible cost.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            address="local",
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"worker_process_setup_hook": quiet_dashboardless_workers},
        )
    progress.attach_ray()  # forwarded worker lines: to the log file, progress to the console


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
