"""``tell assign``: every input row assigned to a cluster exactly once, written as Parquet.

The driver reads forward once through each artifact. :func:`plan`, before any Ray work:
load the model (:func:`jobs.model.load_assignable`: either kind), preflight the output,
open the input (:func:`jobs.input.inspect.list_input`, then the footers of what is left
to assign: id columns present in every file, one feature width) and require the model's width; in
incremental mode the listing is split into its hive partitions first, and those already
committed are skipped (their footers are never read). Then, per unit (the whole input, or each
partition left): :func:`jobs.commit.writer.start_attempt`, Ray Data streams the unit through
:class:`jobs.assign.predictor.Assigner` actors (``map_batches`` with an actor pool; never
Ray Train's split, which can drop rows) into :class:`jobs.assign.sink.AssignmentSink`
write tasks that stage Parquet parts; :func:`jobs.commit.writer.commit` then reconciles
rows in == assigned + rejected from the footers and writes ``_SUCCESS``. See
:mod:`jobs.commit.writer` for the layout and why it is exactly-once, and
:mod:`jobs.assign.predictor` for the output schema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from jobs import faults, progress, runtime, storage, watchdog
from jobs.assign import ids
from jobs.assign.predictor import (
    CHECK_COLUMN,
    REASON,
    TWO_LEVEL_COLUMNS,
    Assigner,
    output_schema,
    result_columns,
)
from jobs.commit import delta, reader, writer
from jobs.config import AssignJob
from jobs.input.inspect import InputSet, list_input
from jobs.model import (
    assignment_run_id,
    is_two_level,
    load_assignable,
    model_id,
    model_shape,
    routed_probes,
    routing,
    routing_check,
)
from tell.errors import TellConfigError, TellStorageError

logger = logging.getLogger("tell.assign")

_MIN_OBJECT_STORE_BYTES = 512 << 20  # object-store budget of one execution, at least
_BATCHES_IN_FLIGHT = 6  # per actor, within that budget
_WRITE_TASK_CPUS = 0  # writes mostly wait on storage; a CPU reservation would let Ray Data
# hold them back behind the actor pool on small clusters (ResourceBudget backpressure)

Hook = Callable[[str], None]


@dataclasses.dataclass
class Plan:
    """What the driver validated before starting Ray.

    units : (unit name, input) to assign; the name is "" for a whole-input run, else the
        partition path (``dt=2026-11-28``).
    skipped : partitions already committed (incremental mode).
    """

    run_id: str
    run: storage.Location
    model_meta: dict[str, Any]
    n_clusters: int
    columns: tuple[str, ...]  # the assignment columns (predictor.result_columns)
    units: list[tuple[str, InputSet]]
    skipped: list[str]
    n_probe: int | None  # coarse groups searched per row (two-level models only)


def plan(job: AssignJob) -> Plan:
    """Validate model, output, input and columns against each other (no Ray yet)."""
    reserved = [*TWO_LEVEL_COLUMNS, REASON, CHECK_COLUMN]
    clash = sorted(set(job.id_columns) & set(reserved))
    if clash or len(set(job.id_columns)) != len(job.id_columns):
        raise TellConfigError(
            f"The 'id_columns' must be distinct and must not be named like an output column "
            f"{reserved}. Got {list(job.id_columns)}."
        )
    model, meta = load_assignable(job.model)
    width, k = model_shape(model)
    n_probe = routed_probes(model, job.n_probe, job.model)
    columns = result_columns(is_two_level(meta))
    out = storage.resolve(job.out)
    storage.check_access(out, write=True)
    run_id = job.run_id or assignment_run_id(meta, job.model, job.data, job.column, job.id_columns)
    run = out.join(run_id)
    files = list_input(job.data)
    skipped: list[str] = []
    paths = None  # every file
    if not job.incremental:
        _check_table_format(job, run, [reader.read_manifest(run)])
    else:
        groups = files.partitions(hive=True)
        done = reader.committed_units(run, list(groups))
        _check_table_format(job, run, list(done.values()))
        skipped = [unit for unit, manifest in done.items() if manifest is not None]
        for unit in skipped:
            _warn_if_changed(unit, files.uris(groups[unit]), done[unit])
        paths = [path for unit, group in groups.items() if unit not in skipped for path in group]
        if not paths:
            return Plan(run_id, run, meta, k, columns, [], skipped, n_probe)
    data = files.open(job.column, required=job.id_columns, paths=paths)  # only these footers
    data.require_width(width, job.model)
    units = list(data.partitions().items()) if job.incremental else [("", data)]
    return Plan(run_id, run, meta, k, columns, units, skipped, n_probe)


def _check_table_format(job: AssignJob, run: storage.Location, manifests: list) -> None:
    """A run keeps the table format it was committed in: a Delta log left beside plain
    Parquet commits would point Delta readers at deleted files, and a Delta table with
    partitions committed without its log would be missing them."""
    committed = {m.get("table_format", "parquet") for m in manifests if m is not None}
    if delta.is_table(run):
        committed.add("delta")
    other = sorted(committed - {job.table_format})
    if other:
        raise TellConfigError(
            f"The run {run.uri} was committed with --table-format {other[0]}; re-run it with "
            f"--table-format {other[0]}, or give this run a new --run-id."
        )
    if job.incremental and job.table_format == "delta":  # one table: one partitioning
        layouts = {m.get("partition_by") == ["cluster"] for m in manifests if m is not None}
        if layouts - {job.partition_by == "cluster"}:
            theirs = "cluster" if job.partition_by != "cluster" else "none"
            raise TellConfigError(
                f"The Delta table {run.uri} holds partitions committed with --partition-by "
                f"{theirs}; assign its new partitions the same way, or give this run a new "
                "--run-id."
            )


def _warn_if_changed(unit: str, uris: list[str], manifest: dict) -> None:
    committed = set(manifest.get("input", {}).get("files", []))
    current = set(uris)
    if committed and current != committed:
        logger.warning(
            "partition %s changed since it was committed (%d file(s) now, %d then); it is "
            "skipped: re-run it without --incremental to reassign it",
            unit, len(current), len(committed),
        )  # fmt: skip


def main(job: AssignJob, *, on_event: Hook | None = None) -> dict[str, Any]:
    """Run the assignment job; returns a summary (run, row counts, files, throughput).

    ``on_event`` (tests, fault injection) is called on the driver with "write_start" when
    the first write task is about to start, "staged" once every part is written, and
    "committed" after ``_SUCCESS`` exists.
    """
    started = time.perf_counter()
    p = plan(job)
    summary: dict[str, Any] = {
        "run_id": p.run_id,
        "run": p.run.uri,
        "model": model_id(p.model_meta),
        **routing(p.model_meta),
        "incremental": job.incremental,
        "table_format": job.table_format,
    }
    if job.incremental:
        summary["partitions_skipped"] = p.skipped
    if not p.units:
        progress.line(f"nothing to assign: every partition of {job.data} is committed")
        return {**summary, "partitions_assigned": [], "rows": 0, "assigned": 0, "rejected": 0}
    runtime.ensure_ray()
    runtime.require_shared_paths(
        {"model": job.model, "data": job.data, "out": job.out}, job.shared_filesystem
    )
    # No batch assigned for stall_timeout_s: one line naming what the cluster waits for.
    with watchdog.watch(job.stall_timeout_s, "assign") as beat:
        committed = [_run_unit(job, p, unit, info, on_event, beat) for unit, info in p.units]
    totals = {key: sum(m["rows"][key] for m in committed) for key in ("assigned", "rejected")}
    if p.n_probe is not None:
        checks = [m["routing_check"] for m in committed]
        summary["routing_check"] = routing_check(
            p.n_probe, sum(c["rows"] for c in checks), sum(c["differs"] for c in checks)
        )
    rows = sum(m["rows"]["input"] for m in committed)
    wall_s = time.perf_counter() - started
    summary.update(
        rows=rows,
        **totals,
        files=sum(len(m["files"]) + len(m["rejected_files"]) for m in committed),
        manifests=[_unit(p.run, u).join(writer.MANIFEST_FILE).uri for u, _ in p.units],
        wall_s=round(wall_s, 2),
        rows_per_s=round(rows / max(wall_s, 1e-9)),
    )
    if job.incremental:
        summary["partitions_assigned"] = [u for u, _ in p.units]
    return summary


def _object_store_budget(job: AssignJob, info: InputSet) -> int:
    """Bytes of object store the execution may hold: enough for every actor to have a few
    batches queued, not the whole input (memory must not grow with the data set)."""
    batch_bytes = job.batch_size * (4 * info.dim + 64)
    return max(_MIN_OBJECT_STORE_BYTES, _BATCHES_IN_FLIGHT * job.workers * batch_bytes)


@contextlib.contextmanager
def _bounded_object_store(dataset: Any, budget: int):
    """Cap the dataset's object-store use (keeping a lower limit set by the user)."""
    options = dataset.context.execution_options
    saved = options.resource_limits
    limit = min(saved.object_store_memory, budget)
    options.resource_limits = saved.copy(object_store_memory=limit)
    try:
        yield
    finally:
        options.resource_limits = saved


def _unit(run: storage.Location, unit: str) -> storage.Location:
    return run.join(unit) if unit else run


def _run_unit(
    job: AssignJob,
    p: Plan,
    unit: str,
    info: InputSet,
    on_event: Hook | None,
    beat: watchdog.Beater,
) -> dict[str, Any]:
    import ray.data

    from jobs.assign.sink import AssignmentSink  # imports Ray Data: only once Ray runs
    from jobs.input.read import read_dataset

    unit_loc = _unit(p.run, unit)
    log = None
    if job.table_format == "delta":
        schema = output_schema(info.footers[0].schema, job.id_columns, p.columns)
        by_cluster = job.partition_by == "cluster"
        log = delta.DeltaLog(p.run, unit, schema, partition_by_cluster=by_cluster)
    # what a crashed attempt may have left visible to plain readers goes first
    writer.repair(unit_loc, reader.read_manifest(unit_loc), () if log is None else log.referenced())
    attempt = writer.start_attempt(unit_loc)
    progress.line(
        f"assigning {info.num_rows:,} rows of {info.uri} ({len(info.files)} files) -> "
        f"{unit_loc.uri}"
    )
    logger.info("attempt %s", attempt.attempt_id)
    sink = AssignmentSink(
        attempt,
        job.id_columns,
        job.min_rows_per_file,
        on_event,
        partition_by_cluster=job.partition_by == "cluster",
        check_column=None if p.n_probe is None else CHECK_COLUMN,
    )
    use_gpu = job.gpus_per_worker > 0
    columns = list(dict.fromkeys([job.column, *job.id_columns]))
    dataset = read_dataset(
        info, columns, concurrency=max(2, job.workers), blocks=2 * job.workers
    ).map_batches(
        Assigner,
        fn_constructor_kwargs={
            "model_uri": job.model,
            "column": job.column,
            "dim": info.dim,
            "id_columns": tuple(job.id_columns),
            "threads": 1 if use_gpu else max(1, int(job.cpus_per_worker)),
            "use_gpu": use_gpu,
            "heartbeat": beat.handle,
            "n_probe": p.n_probe or 1,
            "fault": faults.spec_from_env(),
        },
        batch_format="pyarrow",
        batch_size=job.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=job.workers),
        num_cpus=job.cpus_per_worker,
        num_gpus=job.gpus_per_worker if use_gpu else None,
    )
    try:
        with _bounded_object_store(dataset, _object_store_budget(job, info)):
            dataset.write_datasink(
                sink,
                ray_remote_args={"num_cpus": _WRITE_TASK_CPUS},
                concurrency=max(1, job.workers),  # 0-CPU tasks would otherwise fan out
            )
        if on_event is not None:
            on_event("staged")
        checked = (
            {}
            if p.n_probe is None
            else {"routing_check": routing_check(p.n_probe, *sink.routing_check)}
        )
        manifest = writer.commit(
            attempt,
            input_rows=info.num_rows,
            parts=sink.parts,
            rejected_reasons=sink.reasons,
            log=log,
            metadata={
                "run_id": p.run_id,
                "partition": unit or None,
                "model": {"uri": job.model, "id": model_id(p.model_meta)},
                "n_clusters": p.n_clusters,
                **routing(p.model_meta),
                **checked,
                "input": {
                    "uri": info.uri,
                    "column": job.column,
                    "rows": info.num_rows,
                    "files": info.file_uris(),
                },
                "id_columns": list(job.id_columns),
                "columns": [*job.id_columns, *p.columns],
            },
        )
    except Exception as exc:
        writer.discard(attempt)
        raise _clear_error(exc, job, unit_loc) from None
    if on_event is not None:
        on_event("committed")
    duplicated = ids.duplicated_ids_message(sink.id_sketch, info.num_rows, job.id_columns)
    if duplicated:
        logger.warning("%s: %s", unit_loc.uri, duplicated)
    if checked:
        c = checked["routing_check"]
        rate = "no row" if c["rate"] is None else f"{c['rate']:.2%} of {c['rows']:,} rows"
        progress.line(
            f"routed through {c['n_probe']} of {p.model_meta.get('n_coarse')} coarse groups: "
            f"differs from the exact nearest center on {rate} checked"
        )
    progress.line(
        f"committed {unit_loc.uri}: {manifest['rows']['assigned']:,} assigned, "
        f"{manifest['rows']['rejected']:,} rejected, {len(manifest['files'])} part file(s)"
        + (" in cluster=J/ directories" if manifest["partition_by"] else "")
        + (f", Delta version {manifest['delta_version']}" if "delta_version" in manifest else "")
    )
    return manifest


def _clear_error(exc: BaseException, job: AssignJob, unit: storage.Location) -> BaseException:
    """One clear error for a failed unit: the TellError behind Ray's wrappers, else a storage
    error when a location is unreachable now, else the original exception."""
    suffix = f" Nothing was committed to {unit.uri}; fix the cause and re-run."
    found = runtime.user_error(exc)
    if found is None:
        for uri, write in ((job.out, True), (job.data, False)):
            try:
                storage.check_access(storage.resolve(uri), write=write)
            except TellStorageError as probe:
                found = probe
                break
    if found is None:
        return exc
    if isinstance(found, writer.RowCountMismatch):
        return found
    return type(found)(runtime.one_line(found) + suffix)
