"""``tell evaluate``: ACC/NMI/ARI, inertia and cluster sizes of a committed assignment run.

Only committed runs are read (a directory with a ``_SUCCESS`` manifest), and only the files
the manifest lists (:func:`jobs.commit.reader.committed_parts`, the reader ``tell assign``
commits for), each checked against the row count the manifest records
(:func:`jobs.commit.reader.open_part`). Labels come from a label column passed through to
the assignments, or from the input data joined on the id column; that input is opened like
every job's (:func:`jobs.input.inspect.open_input`), so ``tell evaluate --data`` takes what
``tell assign --data`` takes (hive partitions included).
The assignments are streamed file by file into a (clusters x labels) contingency table, so
memory does not grow with the number of assignment rows; the join keeps the data's
(id, label) columns in memory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs import progress, storage
from jobs.commit import reader
from jobs.config import EvaluateJob
from jobs.input.inspect import open_input, open_parquet
from jobs.report.contingency import Contingency, scores_from_contingency
from tell.errors import TellDataError

logger = logging.getLogger("tell.evaluate")

CLUSTER, DISTANCE = "cluster", "distance"
MAX_TABLE_ROWS = 50  # clusters printed in the log table (the largest)


def _labels_from_data(job: EvaluateJob) -> pa.Table:
    """(id, label) of every row of ``job.data``; refuses duplicate ids (the join would double)."""
    columns = [job.id_column, job.label_column]
    data = open_input(job.data, None, required=columns)
    parts = []
    for path in data.files:
        with open_parquet(data.location, path) as pf:
            parts.append(pf.read(columns=columns))
    table = pa.concat_tables(parts)
    if pc.count_distinct(table[job.id_column]).as_py() != table.num_rows:
        raise TellDataError(
            f"Column {job.id_column!r} of {job.data} has duplicate ids; the join with the "
            "assignments needs unique ids. Set --id-column to a unique key."
        )
    return table


def main(job: EvaluateJob) -> dict[str, Any]:
    """Score a committed assignment run; logs a table and returns the metrics as a dict."""
    run = storage.resolve(job.assignments)
    manifest, listed = reader.committed_parts(run, include_rejected=True)
    parts = listed[: len(manifest.get("files", []))]  # the assigned parts (listed first)
    labels_table: pa.Table | None = None
    tally = Contingency()
    rows = unmatched = 0
    for part in parts:
        path = part.loc.uri
        with reader.open_part(run, part.loc, part.rows) as pf:
            names = pf.schema_arrow.names
            if part.cluster is not None:
                names = [*names, CLUSTER]  # from its cluster=J/ directory
            for needed in (CLUSTER, DISTANCE):
                if needed not in names:
                    raise TellDataError(
                        f"{path} is not an assignment file: no {needed!r} column ({names})."
                    )
            passed_through = job.label_column in names
            if not passed_through and labels_table is None:
                if job.data is None:
                    raise TellDataError(
                        f"Label column {job.label_column!r} is not in the assignments "
                        f"({names}). Pass --data with the input data to join on "
                        f"{job.id_column!r}, or pass it through: tell assign --id-columns "
                        f"{job.id_column} {job.label_column}."
                    )
                if job.id_column not in names:
                    raise TellDataError(
                        f"Id column {job.id_column!r} is not in the assignments ({names}); "
                        "set --id-column to the column 'tell assign' copied."
                    )
                labels_table = _labels_from_data(job)
            read = [CLUSTER, DISTANCE, job.label_column if passed_through else job.id_column]
            stored = [c for c in read if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(columns=stored, batch_size=1 << 20):
                table = part.with_partition_column(pa.Table.from_batches([batch]))
                if not passed_through:
                    table = _join(table, labels_table, job)
                    unmatched += int(table["_matched"].null_count)
                tally.add(table[CLUSTER], table[DISTANCE], table[job.label_column])
                rows += batch.num_rows
    # Each file held the rows the manifest lists for it; now the totals it records.
    check_row_totals(run, manifest, listed)
    result = summarize(tally, manifest, job)
    result.update(
        rows=rows, files=len(parts), unmatched_rows=unmatched, unassigned_rows=tally.unassigned
    )
    if unmatched:
        logger.warning(
            "%d assignment rows have no row in %s (by %r); they count as unlabelled",
            unmatched,
            job.data,
            job.id_column,
        )
    logger.info("\n%s", format_table(result))
    scores = ", ".join(f"{k} {result[k]:.4f}" for k in ("acc", "nmi", "ari") if k in result)
    progress.line(f"scored {rows:,} assigned rows of {run.uri}" + (f": {scores}" if scores else ""))
    if job.out:
        _write_json(job.out, result)
    return result


def check_row_totals(
    run: storage.Location, manifest: dict[str, Any], parts: list[reader.ListedPart]
) -> None:
    """Refuse a manifest whose row totals disagree with the files it lists (assigned parts
    first, then rejected): rows in = assigned + rejected, each the sum of its files' rows."""
    rows = manifest.get("rows") if isinstance(manifest.get("rows"), dict) else {}
    n_assigned = len(manifest.get("files", []))
    listed = {
        "assigned": sum(part.rows for part in parts[:n_assigned]),
        "rejected": sum(part.rows for part in parts[n_assigned:]),
    }
    totals = {key: rows.get(key) for key in ("input", "assigned", "rejected")}
    if (
        any(totals[key] != listed[key] for key in listed)
        or totals["input"] != listed["assigned"] + listed["rejected"]
    ):
        raise TellDataError(
            f"{run.join(reader.MANIFEST_FILE).uri} says rows {totals}, but the files it lists "
            f"hold {listed['assigned']} assigned and {listed['rejected']} rejected rows; the "
            "run is damaged: re-run the assignment."
        )


def _join(table: pa.Table, labels: pa.Table, job: EvaluateJob) -> pa.Table:
    right = labels.append_column("_matched", pa.array(np.ones(labels.num_rows, dtype=bool)))
    try:
        return table.join(right, keys=job.id_column, join_type="left outer")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TellDataError(
            f"Cannot join the assignments with {job.data} on {job.id_column!r}: {exc}. "
            "The id columns must have the same type."
        ) from None


def summarize(tally: Contingency, manifest: dict[str, Any], job: EvaluateJob) -> dict[str, Any]:
    """Metrics, cluster sizes and the per-cluster table from an accumulated tally."""
    k = max(int(manifest.get("n_clusters") or manifest.get("k") or 0), tally.n_clusters)
    sizes = tally.sizes(k)
    table = tally.table(k)  # (k, n_labels), labelled rows only
    labelled = int(table.sum())
    result: dict[str, Any] = {"assignments": job.assignments, "label_column": job.label_column}
    if labelled:
        result.update(scores_from_contingency(table))
    else:
        logger.warning("no labelled rows: ACC/NMI/ARI are not computed")
    per_label = table.sum(axis=1)
    majority = table.argmax(axis=1) if table.size else np.zeros(k, dtype=np.int64)
    result.update(
        inertia=tally.inertia,
        mean_distance=tally.inertia / max(int(sizes.sum()), 1),
        labelled_rows=labelled,
        n_clusters=k,
        clusters_used=int((sizes > 0).sum()),
        empty_clusters=int((sizes == 0).sum()),
        sizes=sizes.tolist(),
        per_cluster=[
            {
                "cluster": j,
                "size": int(sizes[j]),
                "majority_label": tally.label_values[majority[j]] if per_label[j] else None,
                "purity": float(table[j, majority[j]] / per_label[j]) if per_label[j] else None,
            }
            for j in range(k)
        ],
    )
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text summary of :func:`main`'s result for logs and terminals."""
    n = max(result.get("rows", sum(result["sizes"])), 1)
    lines = [
        f"assignments {result['assignments']}: {result.get('rows', n):,} rows, "
        f"{result['n_clusters']} clusters ({result['clusters_used']} used, "
        f"{result['empty_clusters']} empty)",
        "",
        f"{'metric':<14}value",
    ]
    for key in ("acc", "nmi", "ari"):
        if key in result:
            lines.append(f"{key.upper():<14}{result[key]:.4f}")
    lines.append(f"{'inertia':<14}{result['inertia']:.4f}")
    lines.append(f"{'mean distance':<14}{result['mean_distance']:.4f}")
    lines += ["", f"{'cluster':>7} {'rows':>10} {'share':>7}  {'majority':<12} {'purity':>7}"]
    shown = sorted(result["per_cluster"], key=lambda r: -r["size"])[:MAX_TABLE_ROWS]
    for row in sorted(shown, key=lambda r: r["cluster"]):
        purity = "" if row["purity"] is None else f"{row['purity']:.1%}"
        majority = "" if row["majority_label"] is None else str(row["majority_label"])[:12]
        lines.append(
            f"{row['cluster']:>7} {row['size']:>10,} {row['size'] / n:>7.1%}  "
            f"{majority:<12} {purity:>7}"
        )
    if len(result["per_cluster"]) > MAX_TABLE_ROWS:
        lines.append(f"(the {MAX_TABLE_ROWS} largest of {len(result['per_cluster'])} clusters)")
    return "\n".join(lines)


def _write_json(out: str, result: dict[str, Any]) -> None:
    data = json.dumps(result, indent=2, default=str).encode("utf-8")
    if "://" in out:
        storage.write_bytes(storage.resolve(out), data)
        return
    path = Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
