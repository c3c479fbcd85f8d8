"""The ``tell`` command: one subcommand per job, flags generated from the job's config schema.

Every error a user can cause ends as one line on stderr and exit code 2 (usage errors
included); other errors as one line and exit code 1. ``--debug`` (before or after the
command) prints the traceback first; the exit code stays the same.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
import types
import typing
from typing import Any

from jobs import progress
from jobs.config import CHOICES, job_fields, load_job, required_keys
from jobs.runtime import one_line, user_error

COMMANDS = {
    "train": "Fit TELL on Parquet data with Ray Train (DDP), checkpointing to object storage.",
    "assign": "Assign every row to a cluster (exactly once) and write the result to storage.",
    "evaluate": "ACC/NMI/ARI/inertia/size table of committed assignments against labels.",
    "explain": "Write a self-contained HTML report explaining a model on a data set.",
    "demo": "Run the whole pipeline locally on bundled data: train, assign, evaluate, explain; "
    "ends with where everything went and the ACC/NMI/ARI table.",
}
# The module whose ``main(job)`` runs each command, in stage order.
ENTRY_POINTS = {
    "train": "jobs.train.driver",
    "assign": "jobs.assign.driver",
    "evaluate": "jobs.report.evaluate",
    "explain": "jobs.report.explain",
    "demo": "jobs.demo",
}
VERBOSE_HELP = (
    "show Ray's own log lines, warnings and progress bars on stderr too (they always go "
    "to the log file whose path the job prints)"
)
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def _help(name: str, doc: str, default: Any, required: bool) -> str:
    """A flag's help: its description, the allowed values, then required or the default."""
    text = doc  # every key has one (tests/unit/test_cli_config_errors.py checks)
    choices = CHOICES.get(name)
    if choices and not all(f'"{c}"' in text for c in choices):
        text += f" One of: {', '.join(choices)}."
    if required:
        return f"{text} (required)".strip()
    if isinstance(default, tuple):
        default = " ".join(map(str, default))
    return (text + ("" if default in (None, "") else f" (default: {default})")).strip()


def _flag_kwargs(annotation: Any, default: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"nargs": "+", "type": args[0], "metavar": args[0].__name__.upper()}
    return {"type": annotation, "metavar": getattr(annotation, "__name__", "VALUE").upper()}


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line on stderr (exit 2), like every
    other user error, instead of the usage block plus the error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tell",
        description="TELL interpretable neural clustering on Ray: train, assign, evaluate, "
        "explain. Every flag is also a key of the YAML file given with --config "
        "(--batch-size <-> batch_size); flags override the file.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, text in COMMANDS.items():
        required = required_keys(command)
        description = text
        if required:
            flags = ", ".join("--" + key.replace("_", "-") for key in required)
            description += f" Required: {flags} (as flags or keys of --config)."
        p = sub.add_parser(command, help=text, description=description)
        p.add_argument("--config", metavar="FILE", help="YAML file with this job's keys")
        # SUPPRESS: without --debug here, the value of 'tell --debug COMMAND' stands.
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
        p.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
        for name, annotation, default, doc in job_fields(command):
            flags = ["--" + name.replace("_", "-")]
            if name == "id_columns":
                flags.append("--id-column")
            kwargs = _flag_kwargs(annotation, default)
            if name in CHOICES:
                kwargs["metavar"] = "{" + ",".join(CHOICES[name]) + "}"
            p.add_argument(
                *flags,
                dest=name,
                default=None,
                help=_help(name, doc, default, name in required),
                **kwargs,
            )
    return parser


def reserve_stdout() -> typing.TextIO:
    """Keep the process' stdout for the job's summary alone; everything else written to it
    (Ray's forwarded worker and raylet lines, a library's print) goes to stderr, i.e. to the
    log file when :func:`jobs.progress.configure` routed it there.

    File descriptor 1 is pointed at stderr for the rest of the process (Ray's log thread
    keeps printing after the job returns, and C extensions write to the descriptor, not to
    ``sys.stdout``); the returned stream writes to the original stdout.
    """
    sys.stdout.flush()
    summary = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run ``tell`` with ``argv`` (default: the command line); returns the exit code.

    Run as the command (``argv`` None), stdout carries only the summary (JSON, or the
    demo's report) so ``tell train ... | jq`` works even when Ray prints: see
    :func:`reserve_stdout`.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:  # the command itself: one line per stage on stderr, the rest in a file
        progress.configure(args.command, verbose=args.verbose)
    else:  # called in-process (tests): INFO from tell's own loggers on stderr
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        for name in ("tell", "jobs"):
            logging.getLogger(name).setLevel(logging.INFO)
    # After progress.configure: fd 1 then follows the routed fd 2 (the log file when quiet)
    summary_out = reserve_stdout() if argv is None else sys.stdout
    err = progress.console()
    overrides = {
        name: getattr(args, name)
        for name, *_ in job_fields(args.command)
        if getattr(args, name) is not None
    }
    try:
        job = load_job(args.command, args.config, overrides)
        module = importlib.import_module(ENTRY_POINTS[args.command])
        result = module.main(job)
    except Exception as exc:
        if args.debug:
            traceback.print_exc(file=err)
        found = user_error(exc)
        if found is not None:
            progress.close()
            print(f"tell {args.command}: error: {one_line(found)}", file=err, flush=True)
            return EXIT_USER_ERROR
        log = progress.log_path()
        progress.close()
        print(
            f"tell {args.command}: internal error: {type(exc).__name__}: {one_line(exc)} "
            f"(run with --debug for the traceback{f'; log: {log}' if log else ''})",
            file=err,
            flush=True,
        )
        return EXIT_INTERNAL_ERROR
    if progress.log_path() is not None:
        progress.line(f"full log: {progress.log_path()}")
    progress.close()
    # A job with a report for people (the demo's table) ends with it; the others print
    # their summary as JSON for scripts.
    if result is not None:
        report = getattr(module, "format_report", None)
        text = report(result) if report else json.dumps(result, indent=2, default=str)
        print(text, file=summary_out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
