"""How much a learned representation can add over k-means, per data set (issue #11).

``python -m bench headroom [--dataset digits mnist wordnet ...]``

A clustering learned from the rows alone (no labels, no augmentation) can only recover the
classes as far as the rows' own neighbourhoods hold them. For each data set this measures,
with the labels used only to score:

- **10-NN purity**: the share of each row's 10 nearest neighbours (cosine, the rows
  L2-normalised as every encoder's input is) that carry its label;
- **k-means ACC**: scikit-learn ``KMeans(n_init=10)`` on the same normalised rows (the
  identity encoder's objective);
- **headroom** = purity - k-means ACC: how much better than k-means a partition that
  follows the neighbourhoods could be;

beside the gain the learned encoders measured over the identity encoder, read from the
quality benchmark's JSON (``bench-results/quality-<dataset>*.json``) when there is one.
Pixel data have a large headroom (digits, MNIST), sentence embeddings of WordNet glosses
almost none: their neighbourhoods carry the labels no better than k-means's partition does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans

from bench.machine import finish, machine_info
from bench.quality import WORDNET_SETS, load_data
from tell.metrics import cluster_accuracy
from tell.verdict import neighbour_agreement

DATASETS = ("digits", "mnist", *WORDNET_SETS)
NEIGHBOURS = 10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench headroom",
        description="10-NN purity vs k-means ACC per data set, beside the learned gain.",
    )
    p.add_argument("--dataset", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--results", default="bench-results", help="where the quality JSONs are")
    p.add_argument("--out", default="bench-results/headroom.json")
    return p


def load_rows(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, D) float32 rows L2-normalised, y (n,) int64 labels) of data set ``name``, as the
    quality benchmark loads it."""
    X, y, _ = load_data(name, subset=None)
    X = X.reshape(len(X), -1).astype(np.float32)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X, y


def neighbour_purity(X: np.ndarray, y: np.ndarray, n_neighbours: int = NEIGHBOURS) -> float:
    """Mean share of each row's ``n_neighbours`` nearest rows (cosine, itself excluded) with
    its label: the verdict's neighbour agreement (``tell.verdict``) of the true classes.
    ``X`` (n, D) rows, ``y`` (n,) labels."""
    return neighbour_agreement(torch.from_numpy(X), torch.from_numpy(y), n_neighbours)


def learned_gain(name: str, results: Path) -> dict[str, Any]:
    """Mean ACC of each learned encoder minus the identity encoder's on the same seeds, from
    the quality JSONs of ``name`` that ran the defaults: ``quality-<name>-defaults.json``
    (the current defaults), then ``quality-<name>-defaults-*.json`` (earlier runs of an
    encoder whose defaults did not change since); {} when none did."""
    gains: dict[str, Any] = {}
    current = results / f"quality-{name}-defaults.json"
    earlier = sorted(results.glob(f"quality-{name}-defaults-*.json"))
    for path in ([current] if current.is_file() else []) + earlier:
        summary = json.loads(path.read_text())["summary"]
        identity = summary.get("TELL identity")
        for encoder in ("mlp", "conv"):
            learned = summary.get(f"TELL {encoder}")
            if identity and learned and encoder not in gains:
                gain = learned["acc"]["mean"] - identity["acc"]["mean"]
                gains[encoder] = {"gain": round(gain, 4), "source": path.name}
    return gains


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    rows = []
    for name in args.dataset:
        X, y = load_rows(name)
        k = int(y.max()) + 1
        started = time.perf_counter()
        purity = neighbour_purity(X, y)
        labels = KMeans(k, n_init=10, random_state=0).fit_predict(X)
        kmeans_acc = cluster_accuracy(y, labels)
        gain = learned_gain(name, Path(args.results))
        row = {
            "data": name,
            "rows": len(X),
            "k": k,
            "knn10_purity": round(purity, 4),
            "kmeans_acc": round(kmeans_acc, 4),
            "headroom": round(purity - kmeans_acc, 4),
            **{
                f"{encoder}_gain": gain[encoder]["gain"] if encoder in gain else None
                for encoder in ("mlp", "conv")
            },
            "gain_sources": ", ".join(sorted({g["source"] for g in gain.values()})) or None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        print(" ".join(f"{key}={value}" for key, value in row.items()), flush=True)
    result = {
        "benchmark": "headroom",
        "argv": ["headroom", *(argv or [])],
        "machine": finish(machine),
        "tables": {
            "10-NN purity (labels of each row's 10 nearest neighbours, cosine) vs spherical "
            "k-means ACC (n_init=10), and the learned encoders' measured mean ACC gain over "
            "the identity encoder": rows
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result
