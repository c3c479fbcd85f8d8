"""Job configs: one schema for YAML files and command-line flags, validated before Ray starts.

Each job has a frozen dataclass. Its fields are the config-file keys and, in kebab-case, the
command-line flags (``batch_size`` <-> ``--batch-size``). A field whose type is itself a
config dataclass is not a key: its class's keys sit at the top level beside the job's. So
the train job's ``config`` (a :class:`tell.config.TrainConfig`) takes ``k``, ``encoder``,
``epochs``, ... directly, as flags and as YAML keys.
Values come from the YAML file given with ``--config``, then flags override them. Unknown
keys, wrong types and impossible values are refused with the key's name.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from tell.choices import ENCODERS, INITS, OPTIMIZERS
from tell.config import TrainConfig, check_choice, check_range, from_mapping
from tell.errors import TellConfigError

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


def check_run_id(name: str, value: str) -> None:
    """A run id / run name becomes a path component: letters, digits, ``._=-``, no ``..``."""
    if not _RUN_ID.match(value) or ".." in value:
        raise TellConfigError(
            f"The {name!r} must be 1-128 characters of letters, digits and '._=-', not starting "
            f"with a symbol and without '..'. Got {value!r}."
        )


MATERIALIZE = ("auto", "always", "never")
PARTITION_BY = ("none", "cluster")
TABLE_FORMATS = ("parquet", "delta")
DATASETS = ("auto", "digits", "mnist")
# Keys whose value is one of a fixed set (shown in --help; checked by each class).
CHOICES: dict[str, tuple[str, ...]] = {
    "materialize": MATERIALIZE,
    "partition_by": PARTITION_BY,
    "table_format": TABLE_FORMATS,
    "dataset": DATASETS,
    "encoder": tuple(ENCODERS),
    "optimizer": tuple(OPTIMIZERS),
    "init": tuple(INITS),
}


@dataclass(frozen=True)
class Resources:
    """Compute settings shared by the Ray jobs.

    workers : number of Ray workers (training processes or inference actors).
    gpus_per_worker : GPUs per worker (0: CPU; a fraction below 1 shares a GPU; above 1,
        a whole number).
    cpus_per_worker : CPUs reserved per worker (fractions leave room for Ray Data's readers).
    stall_timeout_s : seconds without progress (no file scanned, no batch trained or
        assigned) after which the job fails with one line naming what the cluster waits
        for; 0 waits forever.
    shared_filesystem : local paths are on a filesystem every node mounts at the same
        place (NFS); without it a local path on a multi-node cluster is refused.
    """

    # Keys without a usable default: refused when missing or empty, marked in --help.
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 0.5
    stall_timeout_s: float = 600.0
    shared_filesystem: bool = False

    def __post_init__(self) -> None:
        _require_all(self)
        check_range("workers", self.workers, low=1)
        check_range("gpus_per_worker", self.gpus_per_worker, low=0.0)
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            # Ray schedules fractions of one GPU, or whole GPUs; never 1.5.
            raise TellConfigError(
                f"The 'gpus_per_worker' must be a fraction below 1 or a whole number. "
                f"Got {self.gpus_per_worker!r}."
            )
        check_range("cpus_per_worker", self.cpus_per_worker, low=0.0, low_open=True)
        check_range("stall_timeout_s", self.stall_timeout_s, low=0.0)


_TRAIN_CONFIG_WHERE = "train config"


@dataclass(frozen=True)
class TrainJob(Resources):
    """``tell train``: fit TELL on Parquet data with Ray Train DDP.

    data : URI of the input Parquet data set (local directory or s3://bucket/prefix).
    column : name of the feature column (fixed_size_list/list of numbers, or image bytes).
    out : URI under which runs, checkpoints and the final model are written.
    name : run name; re-using it resumes that run from its last checkpoint.
    max_failures : worker failures survived by restarting from the last checkpoint.
    materialize : keep the decoded features in Ray's object store between epochs: "auto"
        (when they take at most a quarter of it), "always", or "never" (stream the Parquet
        files every epoch).
    checkpoint_every : write a checkpoint after every this many epochs (and always after the
        last one); a failed run resumes from the newest checkpoint.
    checkpoint_min_interval_s : and not sooner than this many seconds after the previous
        checkpoint (0: no minimum), for runs whose epochs take seconds.
    levels : 1 (one TELL of k centers, Ray Train DDP) or 2 (the two-level model for very
        large k, tell.two_level: a coarse TELL of about sqrt(k) centers, then each coarse
        group's share of the k centers fitted as a Ray task; identity encoder, CPU only;
        workers = fine fits at once, of cpus_per_worker CPUs each).
    n_coarse : coarse centers of a two-level model, in [1, k] (default: round(sqrt(k))).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("data", "out")

    data: str = ""
    out: str = ""
    column: str = "embedding"
    name: str = "tell-train"
    max_failures: int = 3
    materialize: str = "auto"
    checkpoint_every: int = 5
    checkpoint_min_interval_s: float = 0.0
    levels: int = 1
    n_coarse: int | None = None
    # The model's hyperparameters: their keys stand at the top level (``k``, ``epochs``).
    # build_job passes them as a mapping, which __post_init__ validates.
    config: TrainConfig = dataclasses.field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _not_empty("column", self.column)
        check_run_id("name", self.name)
        check_range("max_failures", self.max_failures, low=0)
        check_choice("materialize", self.materialize, MATERIALIZE)
        check_range("checkpoint_every", self.checkpoint_every, low=1)
        check_range("checkpoint_min_interval_s", self.checkpoint_min_interval_s, low=0.0)
        if isinstance(self.config, dict):  # the keys from a file and flags (build_job): they
            # are checked after the job's own keys
            object.__setattr__(
                self, "config", from_mapping(TrainConfig, self.config, _TRAIN_CONFIG_WHERE)
            )
        sample_rows = self.config.init_sample_rows
        if sample_rows is not None and sample_rows < self.config.k:
            # The centers are initialised from this sample (k-means++ picks k of its rows).
            raise TellConfigError(
                f"The 'init_sample_rows' ({self.config.init_sample_rows}) must be at least 'k' "
                f"({self.config.k}): the k initial centers are drawn from that sample."
            )
        self._check_levels()

    def _check_levels(self) -> None:
        """``levels`` 2 is k-means of raw rows on CPUs (tell.two_level); ``n_coarse`` is
        one of its settings."""
        check_range("levels", self.levels, low=1, high=2)
        if self.levels == 1:
            if self.n_coarse is not None:
                raise TellConfigError(
                    "The 'n_coarse' applies to two-level models only; add levels: 2 "
                    "(--levels 2) or drop n_coarse."
                )
            return
        if self.config.encoder != "identity":
            raise TellConfigError(
                f"levels: 2 needs the identity encoder (the two-level model clusters the "
                f"rows as they are); got encoder {self.config.encoder!r}. Use --encoder "
                "identity, or levels: 1 for a learned encoder."
            )
        if self.gpus_per_worker > 0:
            raise TellConfigError(
                f"levels: 2 fits on CPUs; 'gpus_per_worker' must be 0 (got "
                f"{self.gpus_per_worker:g})."
            )
        if self.n_coarse is not None:
            check_range("n_coarse", self.n_coarse, low=1, high=self.config.k)


@dataclass(frozen=True)
class AssignJob(Resources):
    """``tell assign``: assign every row of a data set to a cluster, exactly once.

    model : URI of a trained model directory (model.safetensors + metadata.json).
    data : URI of the input Parquet data set (hive partitions like dt=2026-11-28/ allowed).
    out : URI of the output root; each run commits under out/<run_id>/.
    column : name of the feature column.
    id_columns : input columns copied to the output (row identity).
    run_id : name of this run; re-running it replaces its output. Default: derived from
        the model and input.
    batch_size : rows per inference batch.
    min_rows_per_file : smallest output file, in rows.
    incremental : with hive-partitioned input, assign only partitions with no committed output.
    partition_by : "cluster" writes the assigned rows as hive directories cluster=J/ (the
        column then comes from the directory name, as every Parquet reader expects), "none"
        writes them side by side in the run directory.
    table_format : "parquet" (plain Parquet parts and a _SUCCESS manifest) or "delta" (the
        same parts, and the run is also a Delta Lake table: an atomic replacement for Delta
        readers; needs the deltalake package).
    n_probe : a two-level model searches the fine centers of each row's ``n_probe`` nearest
        coarse centers, in [1, n_coarse] (default ``tell.two_level.DEFAULT_N_PROBE``).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "data", "out")

    model: str = ""
    data: str = ""
    out: str = ""
    column: str = "embedding"
    id_columns: tuple[str, ...] = ("id",)
    run_id: str | None = None
    batch_size: int = 65536
    min_rows_per_file: int = 1_000_000
    incremental: bool = False
    partition_by: str = "none"
    table_format: str = "parquet"
    n_probe: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _not_empty("column", self.column)
        if self.n_probe is not None:
            check_range("n_probe", self.n_probe, low=1)  # its upper bound is the model's
        check_choice("partition_by", self.partition_by, PARTITION_BY)
        check_choice("table_format", self.table_format, TABLE_FORMATS)
        if not self.id_columns:
            raise TellConfigError(
                "The 'id_columns' must name at least one column (flag --id-column), so every "
                "assigned row can be traced back to its input row."
            )
        for name in self.id_columns:
            _not_empty("id_columns", name)
        if len(set(self.id_columns)) != len(self.id_columns):
            raise TellConfigError(f"The 'id_columns' repeat a column: {list(self.id_columns)}.")
        if self.run_id is not None:
            check_run_id("run_id", self.run_id)
        check_range("batch_size", self.batch_size, low=1)
        check_range("min_rows_per_file", self.min_rows_per_file, low=1)


@dataclass(frozen=True)
class EvaluateJob:
    """``tell evaluate``: quality of committed assignments against a label column.

    assignments : URI of a committed assignment run (the directory holding _SUCCESS).
    data : URI of the input data holding the labels (joined on id_column); optional when
        the label column was passed through to the assignments.
    label_column : name of the ground-truth label column.
    id_column : column joining assignments to the input rows.
    out : optional path of a JSON file for the metrics (local or s3://bucket/key).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("assignments",)

    assignments: str = ""
    data: str | None = None
    label_column: str = "label"
    id_column: str = "id"
    out: str | None = None

    def __post_init__(self) -> None:
        _require_all(self)
        _not_empty("label_column", self.label_column)
        _not_empty("id_column", self.id_column)
        if self.label_column == self.id_column:
            raise TellConfigError(
                f"The 'label_column' and the 'id_column' must differ; both are "
                f"{self.label_column!r}."
            )
        if self.out is not None:
            _not_empty("out", self.out)


@dataclass(frozen=True)
class ExplainJob:
    """``tell explain``: a self-contained HTML report of a model on a data set.

    model : URI of a trained model directory.
    data : URI of the Parquet data to explain (a sample is drawn).
    out : directory for report.html (local directory or s3://bucket/prefix).
    column : name of the feature column.
    label_column : optional ground-truth column for per-cluster metrics.
    text_column : optional text column shown for the nearest rows of each center.
    sample_rows : rows drawn for the plots.
    n_probe : a two-level model's coarse groups searched per row, as in ``tell assign``.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "data", "out")

    model: str = ""
    data: str = ""
    out: str = ""
    column: str = "embedding"
    label_column: str | None = None
    text_column: str | None = None
    sample_rows: int = 5000
    n_probe: int | None = None

    def __post_init__(self) -> None:
        _require_all(self)
        if self.n_probe is not None:
            check_range("n_probe", self.n_probe, low=1)
        _not_empty("column", self.column)
        for key in ("label_column", "text_column"):
            if getattr(self, key) is not None:
                _not_empty(key, getattr(self, key))
        check_range("sample_rows", self.sample_rows, low=1)


@dataclass(frozen=True)
class DemoJob(Resources):
    """``tell demo``: the whole pipeline on bundled data, locally.

    dataset : "digits" (ships with scikit-learn), "mnist" (when cached) or "auto" (mnist
        when cached, else digits).
    workdir : local directory used as the object store (data, model, assignments, report).
    encoder : the learned encoder trained by the job ("mlp" or "conv"; "identity" trains
        k-means only); the identity encoder is always fitted beside it for the table.
    epochs : clustering epochs (default: the library's).
    pretrain_epochs : autoencoder-only epochs first (default: the library's automatic length).
    workers : training workers.
    """

    dataset: str = "auto"
    workdir: str = "tell-demo"
    encoder: str = "mlp"
    epochs: int | None = None
    pretrain_epochs: int | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("encoder", self.encoder, tuple(ENCODERS))
        _not_empty("workdir", self.workdir)
        if "://" in self.workdir:
            raise TellConfigError(
                f"The 'workdir' must be a local directory (the demo runs offline). "
                f"Got {self.workdir!r}."
            )
        if self.epochs is not None:
            check_range("epochs", self.epochs, low=1)
        if self.pretrain_epochs is not None:
            check_range("pretrain_epochs", self.pretrain_epochs, low=0)


JOBS: dict[str, type] = {
    "train": TrainJob,
    "assign": AssignJob,
    "evaluate": EvaluateJob,
    "explain": ExplainJob,
    "demo": DemoJob,
}


def _require(key: str, value: str) -> None:
    if not value:
        raise TellConfigError(f"The {key!r} key is required (flag --{key.replace('_', '-')}).")


def _require_all(job: Any) -> None:
    for key in type(job).REQUIRED:
        _require(key, getattr(job, key))


def _not_empty(key: str, value: str) -> None:
    if not value.strip():
        raise TellConfigError(f"The {key!r} must be a non-empty column or path. Got {value!r}.")


def _nested(cls: type) -> dict[str, type]:
    """Fields of ``cls`` that hold a config dataclass (their keys sit at the top level)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])
    }


def _required_fields(cls: type) -> tuple[str, ...]:
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def required_keys(kind: str) -> tuple[str, ...]:
    """Keys a ``kind`` job cannot run without: its class's REQUIRED, then the keys without a
    default of the config classes it holds (``k`` for train)."""
    job_cls = JOBS[kind]
    return job_cls.REQUIRED + tuple(
        key for cls in _nested(job_cls).values() for key in _required_fields(cls)
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a local file, with clear errors."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TellConfigError(f"Cannot read config file {path}: {exc.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TellConfigError(
            f"Config file {path} is not valid YAML: {exc}".splitlines()[0]
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TellConfigError(f"Config file {path} must hold a mapping of keys to values.")
    return data


def build_job(kind: str, values: dict[str, Any]) -> Any:
    """Validate ``values`` (merged file + flags) into the job's config object."""
    where = f"{kind} config"
    job_cls = JOBS[kind]
    nested = _nested(job_cls)
    if not nested:
        return from_mapping(job_cls, values, where)
    owner = {f.name: None for f in dataclasses.fields(job_cls) if f.name not in nested}
    for name, cls in nested.items():
        owner.update({f.name: name for f in dataclasses.fields(cls)})
    unknown = sorted(set(values) - set(owner))
    if unknown:
        raise TellConfigError(
            f"Unknown key {unknown[0]!r} in the {where}; valid keys are {sorted(owner)}."
        )
    job_values = {k: v for k, v in values.items() if owner[k] is None}
    for name in nested:  # a mapping: the job validates it after its own keys
        job_values[name] = {k: v for k, v in values.items() if owner[k] == name}
    return from_mapping(job_cls, job_values, where)


def load_job(kind: str, config_path: str | None, overrides: dict[str, Any]) -> Any:
    """Merge the YAML file (if any) with flag overrides and validate (see :func:`build_job`)."""
    values = read_yaml(config_path) if config_path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_job(kind, values)


def field_docs(cls: type) -> dict[str, str]:
    """``name : text`` lines of a class docstring's attribute list (for --help)."""
    docs: dict[str, str] = {}
    current = None
    for line in (cls.__doc__ or "").splitlines():
        m = re.match(r"^\s{4}(\w+) : (.*)$", line)
        if m:
            current = m.group(1)
            docs[current] = m.group(2)
        elif current and line.startswith("        "):
            docs[current] += " " + line.strip()
        else:
            current = None
    return docs


def job_fields(kind: str) -> list[tuple[str, Any, Any, str]]:
    """(name, annotation, default, help) for every key of a job, in a stable order: the
    job's own keys, then those of the config classes it holds."""
    job_cls = JOBS[kind]
    nested = _nested(job_cls)
    out = []
    for cls in [job_cls, *nested.values()]:
        hints = typing.get_type_hints(cls)
        docs = {**field_docs(Resources), **field_docs(cls)}
        for f in dataclasses.fields(cls):
            if cls is job_cls and f.name in nested:
                continue
            default = None if f.default is dataclasses.MISSING else f.default
            out.append((f.name, hints[f.name], default, docs.get(f.name, "")))
    return out
