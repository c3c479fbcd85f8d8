"""The README's "Reading the output" lines, run as written (issue #12).

A run is committed by the protocol itself (jobs.commit.writer, no assignment job needed),
flat and with ``--partition-by cluster``'s layout; each README line is executed with ``run``
set to it and must give exactly the committed assigned rows. Spark's line runs where
``pyspark`` is installed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs import storage
from jobs.commit import delta, writer

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
N_ASSIGNED, N_REJECTED = 500, 7


def readme_lines(block_name: str = "readers") -> dict[str, str]:
    """{engine: its line} from one of the README's readers blocks (the comment names the
    engine): "readers" (plain Parquet) or "delta-readers" (--table-format delta)."""
    text = README.read_text()
    start, end = f"<!-- {block_name}:start -->", f"<!-- {block_name}:end -->"
    block = text.split(start, 1)[1].split(end, 1)[0]
    lines = {}
    for line in block.splitlines():
        match = re.match(r"^(.*\S)\s+# (\S.*)$", line)
        if match:
            lines[match.group(2).strip()] = match.group(1)
    return lines


def _commit(unit: storage.Location, partitioned: bool, table_format: str = "parquet") -> None:
    attempt = writer.start_attempt(unit)
    rng = np.random.default_rng(0)
    ids = np.arange(N_ASSIGNED, dtype=np.int64) * 3 + 1
    clusters = rng.integers(0, 4, N_ASSIGNED).astype(np.int32)
    table = pa.table({
        "id": ids, "cluster": clusters,
        "distance": rng.random(N_ASSIGNED, dtype=np.float32),
        "runner_up": (clusters + 1) % 4,
        "margin": rng.random(N_ASSIGNED, dtype=np.float32),
    })  # fmt: skip
    parts = []
    groups = [(None, table)] if not partitioned else [
        (int(j), table.filter(pc.equal(table["cluster"], j)).drop_columns(["cluster"]))
        for j in np.unique(clusters)
    ]  # fmt: skip
    for cluster, rows in groups:
        part = writer.PartWriter(attempt, writer.ASSIGNED, "part-00000-test.parquet", cluster)
        part.write(rows)
        parts.append(part.close())
    rejected = writer.PartWriter(attempt, writer.REJECTED, "part-00000-test.parquet")
    rejected.write(pa.table({"id": np.arange(N_REJECTED) + 10_000, "reason": ["null"] * 7}))
    parts.append(rejected.close())
    log = None
    if table_format == "delta":
        log = delta.DeltaLog(unit, "", table.schema, partition_by_cluster=partitioned)
    writer.commit(attempt, input_rows=N_ASSIGNED + N_REJECTED, parts=parts, log=log,
                  metadata={"columns": table.column_names})  # fmt: skip
    stray = writer.start_attempt(unit)
    stray_part = writer.PartWriter(stray, writer.ASSIGNED, "part-99998-crashed.parquet")
    stray_part.write(table)  # a crashed attempt of a later re-run, still staged
    stray_part.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    out = {}
    for name, partitioned in (("flat", False), ("by-cluster", True)):
        unit = storage.resolve(str(root / name))
        _commit(unit, partitioned)
        out[name] = str(root / name)
    if importlib.util.find_spec("deltalake") is not None:
        for name, partitioned in (("delta-flat", False), ("delta-by-cluster", True)):
            unit = storage.resolve(str(root / name))
            for _ in range(2):  # a re-run: the replaced commit's files stay one commit
                _commit(unit, partitioned, "delta")
            out[name] = str(root / name)
    return out


def _rows(result) -> int:
    if hasattr(result, "shape"):  # a pandas DataFrame
        return result.shape[0]
    return result.count()  # a Ray Dataset, a Spark DataFrame


def _check_committed_rows(engine: str, scope: dict, where: str) -> None:
    """What an executed README line left in ``df`` or ``ds``: exactly the committed rows."""
    result = scope.get("df", scope.get("ds"))
    assert _rows(result) == N_ASSIGNED, where
    if engine in ("pandas", "DuckDB"):
        ids = np.sort(result["id"].to_numpy())
        np.testing.assert_array_equal(ids, np.arange(N_ASSIGNED) * 3 + 1)
        assert "cluster" in result.columns and "reason" not in result.columns


ENGINES = ["pandas", "DuckDB", "Ray Data", "Spark"]
AVAILABLE = {
    "pandas": "pandas",
    "DuckDB": "duckdb",
    "Ray Data": "ray",
    "Spark": "pyspark",
}


def test_the_readme_names_one_line_per_engine():
    assert sorted(readme_lines()) == sorted(ENGINES)


@pytest.mark.parametrize("layout", ["flat", "by-cluster"])
@pytest.mark.parametrize("engine", ENGINES)
def test_readme_line_reads_exactly_the_committed_rows(engine, layout, runs, ray_cluster):
    if importlib.util.find_spec(AVAILABLE[engine]) is None:
        pytest.skip(f"{AVAILABLE[engine]} is not installed here")
    line = readme_lines()[engine]
    run = runs[layout]
    if engine == "DuckDB" and layout == "by-cluster":  # the README's sentence below the block
        line = line.replace("'{run}/*.parquet'", "read_parquet('{run}/cluster=*/*.parquet', "
                            "hive_partitioning = true)")  # fmt: skip
    scope: dict = {"run": run}
    if engine == "Spark":
        from pyspark.sql import SparkSession

        scope["spark"] = SparkSession.builder.master("local[1]").getOrCreate()
    exec(line, scope)
    _check_committed_rows(engine, scope, f"{engine} {layout}: {line}")


def test_the_readme_names_one_delta_line_per_engine():
    assert sorted(readme_lines("delta-readers")) == sorted(ENGINES)


@pytest.mark.parametrize("layout", ["delta-flat", "delta-by-cluster"])
@pytest.mark.parametrize("engine", ENGINES)
def test_readme_delta_line_reads_exactly_the_current_version(engine, layout, runs, ray_cluster):
    """--table-format delta after a re-run: the directory holds two commits' files, every
    Delta reader of the README reads exactly the current one."""
    if importlib.util.find_spec("deltalake") is None:
        pytest.skip("deltalake is not installed here")
    if engine == "Spark":
        pytest.skip("Spark reads Delta with the delta-spark package, not installed here")
    line = readme_lines("delta-readers")[engine]
    scope: dict = {"run": runs[layout]}
    exec(line, scope)
    _check_committed_rows(engine, scope, f"{engine} {layout}: {line}")
