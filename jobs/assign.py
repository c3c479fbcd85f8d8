"""``tell assign``: every input row assigned to a cluster exactly once, written as Parquet.

Driver (:func:`main`): before any Ray work, load and validate the model, preflight the
output location, inspect every input footer (id columns present, feature width equal to the
model's input width). Then, per unit (the whole input, or each not-yet-committed hive
partition in incremental mode): Ray Data streams the input through :class:`Assigner` actors
(``map_batches`` with an actor pool; never Ray Train's split, which can drop rows) into
:class:`jobs.assign_sink.AssignmentSink` write tasks that stage Parquet parts;
:func:`jobs.commit.commit` then reconciles rows in == assigned + rejected from the footers
and writes ``_SUCCESS``.
See :mod:`jobs.commit` for the layout and why it is exactly-once.

Output schema (assigned parts): the id columns as read, ``cluster`` int32, ``distance``
float32 (squared Euclidean on the unit sphere, in [0, 4]), ``runner_up`` int32, ``margin``
float32 (runner-up distance minus distance). Rows that cannot be assigned (null, non-finite
values, wrong length) go to ``_rejected`` parts: the id columns and a ``reason``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from jobs import commit, ray_runtime, storage
from jobs.config import AssignJob
from jobs.data import InputInfo, inspect_input, read_dataset
from jobs.model_store import load_model, model_id
from tell.assign import assign
from tell.errors import TellConfigError, TellDataError, TellError, TellStorageError
from tell.io import screen_rows

logger = logging.getLogger("tell.assign")

RESULT_COLUMNS = ("cluster", "distance", "runner_up", "margin")
REASON = commit.REASON_COLUMN
_ENCODE_CHUNK_ROWS = 16384  # bounds the encoder's activations per forward
_MIN_OBJECT_STORE_BYTES = 512 << 20  # object-store budget of one execution, at least
_BATCHES_IN_FLIGHT = 6  # per actor, within that budget
_WRITE_TASK_CPUS = 0  # writes mostly wait on storage; a CPU reservation would let Ray Data
# hold them back behind the actor pool on small clusters (ResourceBudget backpressure)

Hook = Callable[[str], None]


# ------------------------------------------------------------------------------ actors


class Assigner:
    """``map_batches`` callable: an Arrow batch -> the id columns, assignment and ``reason``.

    Loads the model once per actor (safetensors + JSON via :mod:`jobs.model_store`), screens
    the rows, encodes the valid ones (no grad, eval mode, on the GPU when the actor has one)
    and runs :func:`tell.assign.assign`. Rejected rows get null results and a reason;
    assigned rows a null reason. Row order and count are those of the batch.
    """

    def __init__(
        self,
        model_uri: str,
        column: str,
        dim: int,
        id_columns: tuple[str, ...],
        threads: int = 1,
        use_gpu: bool = False,
    ) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.column, self.dim, self.id_columns = column, dim, tuple(id_columns)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        model, _ = load_model(model_uri)
        if model.spec.input_dim != dim:
            raise TellDataError(
                f"Model {model_uri} expects {model.spec.input_dim} values per row, the input "
                f"has {dim}."
            )
        self.model = model.to(self.device).eval()
        self.centers = model.cluster.centers.to(self.device).contiguous()  # (k, d_z)

    def __call__(self, batch: pa.Table) -> pa.Table:
        screen = screen_rows(batch, self.column, self.dim)
        n, m = batch.num_rows, screen.matrix.shape[0]
        labels = np.empty(m, np.int32)
        runner_up = np.empty(m, np.int32)
        distance = np.empty(m, np.float32)
        margin = np.empty(m, np.float32)
        x = torch.from_numpy(screen.matrix)  # (m, D) float32
        with torch.inference_mode():
            for start in range(0, m, _ENCODE_CHUNK_ROWS):
                stop = min(start + _ENCODE_CHUNK_ROWS, m)
                z = self.model.encode(x[start:stop].to(self.device, non_blocking=True))
                result = assign(z, self.centers)
                labels[start:stop] = result.labels.to(torch.int32).cpu().numpy()
                runner_up[start:stop] = result.runner_up.to(torch.int32).cpu().numpy()
                distance[start:stop] = result.distance.cpu().numpy()
                margin[start:stop] = result.margin.cpu().numpy()
        arrays: list[Any] = [batch.column(name) for name in self.id_columns]
        if m == n:
            arrays += [pa.array(a) for a in (labels, distance, runner_up, margin)]
            arrays.append(pa.nulls(n, pa.string()))
        else:
            valid = screen.valid
            for values in (labels, distance, runner_up, margin):
                full = np.zeros(n, values.dtype)
                full[valid] = values
                arrays.append(pa.array(full, mask=~valid))
            arrays.append(pa.array(screen.reasons, type=pa.string()))
        return pa.table(arrays, names=[*self.id_columns, *RESULT_COLUMNS, REASON])


# ------------------------------------------------------------------------------ driver


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
    units: list[tuple[str, InputInfo]]
    skipped: list[str]


def default_run_id(job: AssignJob, meta: dict[str, Any]) -> str:
    """A stable run id from the model, data and column: re-running the same command
    replaces its own output instead of adding a new run."""
    key = "\n".join([model_id(meta), job.model, job.data, job.column, *job.id_columns])
    return "assign-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def plan(job: AssignJob) -> Plan:
    """Validate model, output, input and columns against each other (no Ray yet)."""
    clash = sorted(set(job.id_columns) & {*RESULT_COLUMNS, REASON})
    if clash or len(set(job.id_columns)) != len(job.id_columns):
        raise TellConfigError(
            f"The 'id_columns' must be distinct and must not be named like an output column "
            f"{[*RESULT_COLUMNS, REASON]}. Got {list(job.id_columns)}."
        )
    model, meta = load_model(job.model)
    input_dim, k = model.spec.input_dim, model.cluster.n_clusters
    out = storage.resolve(job.out)
    storage.check_access(out, write=True)
    run_id = job.run_id or default_run_id(job, meta)
    run = out.join(run_id)
    root = storage.resolve(job.data)
    storage.check_access(root, write=False)
    groups = commit.group_by_partition(
        root, storage.list_files(root, suffix=".parquet", recursive=True)
    )
    if not groups:
        raise TellDataError(f"No Parquet files under {job.data}.")
    skipped: list[str] = []
    if job.incremental:
        commit.check_partitions(job.data, groups)
        done = commit.committed_units(run, list(groups))
        skipped = [unit for unit, manifest in done.items() if manifest is not None]
        for unit in skipped:
            _warn_if_changed(unit, groups[unit], done[unit], root)
        names = [unit for unit in groups if unit not in skipped]
        units = [(unit, _inspect(job, root, unit)) for unit in names]
    else:
        infos = [_inspect(job, root, unit) for unit in groups]
        units = [("", _merge(job.data, root, infos))]
    for _, info in units:
        # Screening zero rows of the column's type refuses non-numeric types up front.
        typ = info.column_type
        typ = typ.storage_type if isinstance(typ, pa.BaseExtensionType) else typ
        screen_rows(pa.table({job.column: pa.array([], typ)}), job.column, 1)
        if info.dim != input_dim:
            raise TellDataError(
                f"Column {job.column!r} of {info.uri} has {info.dim} values per row, but model "
                f"{job.model} expects {input_dim} (the width it was trained on). Pass the "
                "feature column the model was trained on (--column), or a matching model."
            )
    return Plan(run_id, run, meta, k, units, skipped)


def _inspect(job: AssignJob, root: storage.Location, unit: str) -> InputInfo:
    uri = root.join(unit).uri if unit else job.data
    return inspect_input(uri, job.column, required=job.id_columns)


def _merge(uri: str, root: storage.Location, infos: list[InputInfo]) -> InputInfo:
    """One InputInfo over several directories (a hive-partitioned input read as a whole)."""
    if len(infos) == 1:
        return infos[0]
    widths = {info.dim for info in infos}
    if len(widths) > 1:
        raise TellDataError(
            f"The feature width differs between directories of {uri}: "
            f"{sorted((i.uri, i.dim) for i in infos)[:4]}. Every file needs the same width."
        )
    return dataclasses.replace(
        infos[0],
        uri=uri,
        location=root,
        files=[f for info in infos for f in info.files],
        num_rows=sum(info.num_rows for info in infos),
    )


def _warn_if_changed(unit: str, files: list[str], manifest: dict, root: storage.Location) -> None:
    committed = set(manifest.get("input", {}).get("files", []))
    current = {_file_uri(root, f) for f in files}
    if committed and current != committed:
        logger.warning(
            "partition %s changed since it was committed (%d file(s) now, %d then); it is "
            "skipped: re-run it without --incremental to reassign it",
            unit, len(current), len(committed),
        )  # fmt: skip


def _file_uri(root: storage.Location, path: str) -> str:
    return f"s3://{path}" if root.is_s3 else path


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
        "incremental": job.incremental,
    }
    if job.incremental:
        summary["partitions_skipped"] = p.skipped
    if not p.units:
        logger.info("nothing to assign: every partition of %s is committed", job.data)
        return {**summary, "partitions_assigned": [], "rows": 0, "assigned": 0, "rejected": 0}
    ray_runtime.ensure_ray()
    committed = [_run_unit(job, p, unit, info, on_event) for unit, info in p.units]
    totals = {key: sum(m["rows"][key] for m in committed) for key in ("assigned", "rejected")}
    rows = sum(m["rows"]["input"] for m in committed)
    wall_s = time.perf_counter() - started
    summary.update(
        rows=rows,
        **totals,
        files=sum(len(m["files"]) + len(m["rejected_files"]) for m in committed),
        manifests=[_unit(p.run, u).join(commit.MANIFEST_FILE).uri for u, _ in p.units],
        wall_s=round(wall_s, 2),
        rows_per_s=round(rows / max(wall_s, 1e-9)),
    )
    if job.incremental:
        summary["partitions_assigned"] = [u for u, _ in p.units]
    return summary


def _object_store_budget(job: AssignJob, info: InputInfo) -> int:
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
    job: AssignJob, p: Plan, unit: str, info: InputInfo, on_event: Hook | None
) -> dict[str, Any]:
    import ray.data

    from jobs.assign_sink import AssignmentSink  # imports Ray Data: only once Ray runs

    unit_loc = _unit(p.run, unit)
    attempt = commit.start_attempt(unit_loc)
    logger.info(
        "assigning %d rows of %s (%d files) -> %s (attempt %s)",
        info.num_rows, info.uri, len(info.files), unit_loc.uri, attempt.attempt_id,
    )  # fmt: skip
    sink = AssignmentSink(attempt, job.id_columns, job.min_rows_per_file, on_event)
    use_gpu = job.gpus_per_worker > 0
    columns = list(dict.fromkeys([job.column, *job.id_columns]))
    dataset = read_dataset(info, columns).map_batches(
        Assigner,
        fn_constructor_kwargs={
            "model_uri": job.model,
            "column": job.column,
            "dim": info.dim,
            "id_columns": tuple(job.id_columns),
            "threads": 1 if use_gpu else max(1, int(job.cpus_per_worker)),
            "use_gpu": use_gpu,
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
        manifest = commit.commit(
            attempt,
            input_rows=info.num_rows,
            parts=sink.parts,
            rejected_reasons=sink.reasons,
            metadata={
                "run_id": p.run_id,
                "partition": unit or None,
                "model": {"uri": job.model, "id": model_id(p.model_meta)},
                "n_clusters": p.n_clusters,
                "input": {
                    "uri": info.uri,
                    "column": job.column,
                    "rows": info.num_rows,
                    "files": [_file_uri(info.location, f) for f in info.files],
                },
                "id_columns": list(job.id_columns),
                "columns": [*job.id_columns, *RESULT_COLUMNS],
            },
        )
    except Exception as exc:
        commit.discard(attempt)
        raise _clear_error(exc, job, unit_loc) from None
    if on_event is not None:
        on_event("committed")
    logger.info(
        "committed %s: %d assigned, %d rejected, %d file(s)",
        unit_loc.uri, manifest["rows"]["assigned"], manifest["rows"]["rejected"],
        len(manifest["files"]) + len(manifest["rejected_files"]),
    )  # fmt: skip
    return manifest


def _clear_error(exc: BaseException, job: AssignJob, unit: storage.Location) -> BaseException:
    """One clear error for a failed unit: the TellError behind Ray's wrappers, else a storage
    error when a location is unreachable now, else the original exception."""
    suffix = f" Nothing was committed to {unit.uri}; fix the cause and re-run."
    found = _tell_error(exc)
    if found is None:
        for uri, write in ((job.out, True), (job.data, False)):
            try:
                storage.check_access(storage.resolve(uri), write=write)
            except TellStorageError as probe:
                found = probe
                break
    if found is None:
        return exc
    if isinstance(found, commit.RowCountMismatch):
        return found
    message = str(found).strip().splitlines()[0] if str(found).strip() else type(found).__name__
    return type(found)(message + suffix)


def _tell_error(exc: BaseException) -> TellError | None:
    """The innermost-wrapped TellError: Ray's RayTaskError subclasses the error it carries
    (its text is a traceback), so follow ``cause`` down to the original exception."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(current, TellError) and not isinstance(cause, TellError):
            return current
        stack += [cause, current.__cause__, current.__context__]
    return None
