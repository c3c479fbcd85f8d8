"""Clustering quality of TELL per seed, beside scikit-learn k-means and the paper's numbers.

``python -m bench quality --dataset <name> --seeds 5``, ``<name>`` one of :data:`DATASETS`.

For every seed it fits TELL once per encoder (per-dataset defaults below, overridable by
flags) and scikit-learn ``KMeans(n_init=10, init="k-means++")`` on the same input (raw
pixels or embeddings), then prints one table row per run (ACC/NMI/ARI in %, final L_clu,
partition inertia relative to k-means, epochs, wall time), the mean/min per method, the
paper's numbers and the issue's goal, and writes everything (machine, exact parameters,
per-epoch history) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans

from bench.machine import finish, machine_info
from tell import TELL
from tell.datasets import load_digits, load_mnist, load_wordnet, make_spherical_blobs
from tell.metrics import clustering_scores, partition_inertia

DATASETS = (
    "mnist", "digits", "wordnet", "wordnet-verbs", "wordnet-nouns-after10", "synthetic"
)  # fmt: skip
# Two more text sets that no default was measured on, to check the defaults generalise
# (issue 11: they are checked on data we do not have): the 12 largest verb classes, 400
# glosses each (4,800 rows, the size of a held-out 14-topic set of 4.7k rows), and the 11th
# to 20th largest noun classes, 600 each (classes disjoint from "wordnet"'s).
WORDNET_SETS: dict[str, dict[str, Any]] = {
    "wordnet": {},
    "wordnet-verbs": {"n_classes": 12, "per_class": 400, "part_of_speech": "verb"},
    "wordnet-nouns-after10": {"n_classes": 10, "per_class": 600, "skip_largest": 10},
}
ENCODERS = ("identity", "mlp", "conv")
SYNTHETIC_SHAPE = (50_000, 64, 50)  # rows, features, clusters
DEFAULT_LR = {"adadelta": 1.0, "adam": 1e-3, "sgd": 0.01}

# The encoders each data set runs by default, all with the estimator's own defaults (issue
# 11: defaults are the product; nothing here is tuned per data set). The conv encoder needs
# images; identity is always run beside the learned encoders as the k-means baseline.
DEFAULT_ENCODERS: dict[str, tuple[str, ...]] = {
    "synthetic": ("identity",),
    "wordnet": ("identity", "mlp"),
    "wordnet-verbs": ("identity", "mlp"),
    "wordnet-nouns-after10": ("identity", "mlp"),
    "digits": ("identity", "mlp", "conv"),
    "mnist": ("identity", "mlp"),
}

# (ACC, NMI, ARI) in %; ../shared/docs/TELL.md section 6 and DATA.md.
REFERENCES: dict[str, dict[str, Any]] = {
    "mnist": {
        "paper TELL (best of 5 by L_clu, 3000 epochs)": [95.16, 88.83, 89.66],
        "paper TELL, 5000 epochs": [95.54, 89.72, 90.44],
        "paper TELL, ACC of its 5 seeds": [95.16, 95.10, 82.88, 82.04, 81.69],
        "paper conv AE + k-means (two-stage)": [80.40, 79.65, 74.34],
        "paper k-means on AE features": [78.32, 77.75, 70.53],
        "paper k-means on raw pixels": [55.34, 53.20, 40.28],
    },
    "wordnet": {"k-means++ on MiniLM (DATA.md)": [58.9, 50.3, 41.5]},
    "digits": {"k-means (DATA.md)": [79.2, 74.3, 66.6]},
    "wordnet-verbs": {},
    "wordnet-nouns-after10": {},
    "synthetic": {},
}
GOALS = {
    "mnist": "mlp defaults: mean ACC >= 0.85, every seed >= 0.80 (CPU); conv on a GPU: every "
    "seed >= 0.952 within 150 epochs; no run's NMI below 0.8x identity's",
    "wordnet": "mlp defaults: mean ACC and mean NMI >= identity's + 0.02, every seed's ACC >= "
    "identity's mean - 0.01; no run's NMI below 0.8x identity's",
    "wordnet-verbs": "held-out check: no run's NMI below 0.8x identity's",
    "wordnet-nouns-after10": "held-out check: no run's NMI below 0.8x identity's",
    "synthetic": "identity: partition inertia <= 1.01x KMeans(n_init=10), ACC >= 0.98",
    "digits": "conv defaults: mean ACC >= 0.86, every seed >= 0.82; no run's NMI below 0.8x "
    "identity's",
}


SUBSET_GOAL = (
    "a subset of the rows (the issue's goals are for the whole set): no run's NMI below 0.8x "
    "identity's"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench quality",
        description="ACC/NMI/ARI of TELL per seed beside scikit-learn k-means and the paper.",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1 (default 0)")
    p.add_argument("--encoder", nargs="+", choices=ENCODERS, help="default: per data set")
    p.add_argument("--subset", type=int, help="rows (random, fixed across seeds); default all")
    p.add_argument("--out", help="JSON path (default bench-results/quality-<dataset>.json)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--kmeans-n-init", type=int, default=10, help="0 skips k-means")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--job-workers",
        type=int,
        default=0,
        help="also run each TELL fit as the Ray job (tell train) with this many workers on "
        "the same rows written as Parquet (0: estimator only)",
    )
    tune = p.add_argument_group("TELL overrides (applied to every encoder)")
    tune.add_argument("--epochs", type=int, dest="max_iter")
    tune.add_argument("--pretrain-epochs", type=int)
    tune.add_argument("--batch-size", type=int)
    tune.add_argument("--optimizer", choices=tuple(DEFAULT_LR))
    tune.add_argument("--lr", type=float, help="default: 1.0 adadelta, 1e-3 adam, 0.01 sgd")
    tune.add_argument("--latent-dim", type=int)
    tune.add_argument("--hidden-dims", type=int, nargs="+")
    tune.add_argument("--init", choices=("k-means++", "random"))
    tune.add_argument("--n-init", type=int)
    tune.add_argument("--repair", action=argparse.BooleanOptionalAction, default=None)
    return p


def load_data(name: str, subset: int | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows X (n, ...) float32, labels y (n,) and a description of exactly what was loaded."""
    if name == "synthetic":
        rows, dim, k = SYNTHETIC_SHAPE
        ds = make_spherical_blobs(subset or rows, dim, k, seed=0)
        info: dict[str, Any] = {"source": f"make_spherical_blobs(n, {dim}, {k}, seed=0)"}
        n_classes = k
    elif name in WORDNET_SETS:
        kwargs = WORDNET_SETS[name]
        ds = load_wordnet(**kwargs)
        args = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        info = {"source": f"tell.datasets.load_wordnet({args})"}
        n_classes = ds.n_classes
    else:
        ds = {"mnist": load_mnist, "digits": load_digits}[name]()
        info = {"source": f"tell.datasets.load_{name}()"}
        n_classes = ds.n_classes
    X, y = ds.X, ds.y
    info["rows_available"] = int(X.shape[0])
    if subset is not None and name != "synthetic" and subset < X.shape[0]:
        rows = np.sort(np.random.default_rng(0).permutation(X.shape[0])[:subset])
        X, y = X[rows], y[rows]
        info["subset"] = f"{subset} rows drawn with np.random.default_rng(0), same for all seeds"
    info.update(
        rows=int(X.shape[0]),
        shape=list(X.shape[1:]),
        n_clusters=int(n_classes),
        image_shape=list(ds.image_shape) if ds.image_shape else None,
        class_counts=np.bincount(y, minlength=n_classes).tolist(),
    )
    return X, y, info


def tell_params(args: argparse.Namespace, encoder: str, info: dict[str, Any]) -> dict[str, Any]:
    """The TELL constructor arguments for one encoder: data-set defaults, then flags."""
    params = {
        "n_clusters": info["n_clusters"],
        "encoder": encoder,
        "device": args.device,
    }
    if encoder == "conv":
        params["image_shape"] = tuple(info["image_shape"])
    for name in ("max_iter", "pretrain_epochs", "batch_size", "optimizer", "lr", "latent_dim"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.optimizer is not None and args.lr is None:
        params["lr"] = DEFAULT_LR[args.optimizer]
    for name in ("init", "n_init", "repair"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.hidden_dims is not None:
        params["hidden_dims"] = tuple(args.hidden_dims)
    if encoder == "identity":
        params.pop("pretrain_epochs", None)  # nothing to pretrain
    return params


def run_kmeans(x_flat: np.ndarray, y: np.ndarray, k: int, n_init: int, seed: int) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    km = KMeans(k, init="k-means++", n_init=n_init, random_state=seed).fit(x_flat)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "method": f"k-means++ (sklearn, n_init={n_init})",
        "encoder": None,
        **clustering_scores(y, km.labels_),
        "clu_loss": None,
        "inertia": partition_inertia(x_flat, km.labels_),
        "epochs": int(km.n_iter_),
        "pretrain_epochs": 0,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "empty_clusters": int(k - np.unique(km.labels_).size),
    }


def run_tell(X: np.ndarray, x_flat: np.ndarray, y: np.ndarray, params: dict, seed: int) -> dict:
    est = TELL(**params, random_state=seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    est.fit(X)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    epochs = [h for h in est.history_ if h["phase"] != "pretrain"]
    return {
        "method": f"TELL {params['encoder']}",
        "encoder": params["encoder"],
        **clustering_scores(y, est.labels_),
        "clu_loss": float(epochs[-1]["clu_loss"]),
        "inertia": partition_inertia(x_flat, est.labels_),
        "epochs": len(epochs),
        "pretrain_epochs": len(est.history_) - len(epochs),
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "empty_clusters": int(params["n_clusters"] - np.unique(est.labels_).size),
        "outcome": est.outcome_,
        "verdict": est.verdict_,
        "history": [
            {key: h[key] for key in ("phase", "rec_loss", "clu_loss", "inertia_per_row", "moved")}
            for h in est.history_
        ],
    }


def run_job(
    X: np.ndarray, x_flat: np.ndarray, y: np.ndarray, params: dict, seed: int, workers: int
) -> dict:
    """The same fit as :func:`run_tell` through ``tell train`` (Ray Train DDP, ``workers``
    workers) on X written as Parquet in a temporary directory; labels from the published
    model. Wall time includes the job's fixed costs (Ray start-up, scan, publish)."""
    import tempfile

    from jobs.config import TrainJob
    from jobs.model import load_model
    from jobs.train import driver
    from tell.assign import nearest
    from tell.config import TrainConfig
    from tell.io import embeddings_to_table, write_parquet_files

    renamed = {"n_clusters": "k", "max_iter": "epochs"}
    cfg = {renamed.get(k, k): v for k, v in params.items() if k != "device"}
    cfg = TrainConfig(**{**cfg, "seed": seed})
    with tempfile.TemporaryDirectory(prefix="tell-quality-job-") as tmp:
        data_dir = Path(tmp) / "data"
        write_parquet_files(embeddings_to_table(x_flat, labels=y), data_dir, n_files=4)
        job = TrainJob(data=str(data_dir), out=str(Path(tmp) / "out"), name="quality",
                       workers=workers, config=cfg)  # fmt: skip
        start = time.perf_counter()
        summary = driver.main(job)
        wall_s = time.perf_counter() - start
        net, meta = load_model(summary["model"])
    with torch.no_grad():
        labels = nearest(net.encode(torch.from_numpy(x_flat)), net.cluster.centers)[0].numpy()
    return {
        "method": f"TELL {params['encoder']} (tell train, {workers} workers)",
        "encoder": params["encoder"],
        "via_job": True,
        **clustering_scores(y, labels),
        "clu_loss": float(meta["metrics"]["clu_loss"]),
        "inertia": partition_inertia(x_flat, labels),
        "epochs": sum(h["phase"] != "pretrain" for h in meta["history"]),
        "pretrain_epochs": sum(h["phase"] == "pretrain" for h in meta["history"]),
        "wall_s": wall_s,
        "cpu_s": float("nan"),
        "empty_clusters": int(params["n_clusters"] - np.unique(labels).size),
        "outcome": meta.get("outcome"),
        "verdict": meta.get("verdict"),
    }


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per method: mean/min/max of the scores, mean wall time, and the paper's protocol
    (the seed with the lowest final L_clu)."""
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        s: dict[str, Any] = {
            "seeds": len(rs),
            "wall_s_mean": float(np.mean([r["wall_s"] for r in rs])),
            "cpu_s_mean": float(np.mean([r["cpu_s"] for r in rs])),
        }
        for key in ("acc", "nmi", "ari", "inertia_vs_kmeans"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                s[key] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)),
                          "max": float(np.max(vals))}  # fmt: skip
        if rs[0]["clu_loss"] is not None:
            best = min(rs, key=lambda r: r["clu_loss"])
            s["lowest_clu_loss_seed"] = {k: best[k] for k in ("seed", "acc", "nmi", "ari")}
        out[method] = s
    return out


def check_goal(
    dataset: str, runs: list[dict], epochs_limit: int = 150, subset: bool = False
) -> dict[str, Any]:
    """Whether the issue's goal for this data set was met by the runs made (None: no goal).
    On a ``subset`` of the rows only the goal every set shares is checked (no run's NMI
    below 0.8x identity's): the others are stated for the whole set."""
    goal = SUBSET_GOAL if subset else GOALS[dataset]
    specific = None if subset else dataset  # whose set-specific checks apply
    jobs = [r for r in runs if r.get("via_job")]
    tell = [r for r in runs if r["encoder"] is not None and not r.get("via_job")]
    km = [r for r in runs if r["encoder"] is None]
    if dataset == "synthetic":
        ident = [r for r in tell if r["encoder"] == "identity"]
        ok = bool(ident) and all(
            r["acc"] >= 0.98 and (r.get("inertia_vs_kmeans") or 0) <= 1.01 for r in ident
        )
        return {"goal": GOALS[dataset], "met": ok if km else None}  # any size
    by_encoder = {e: [r for r in tell if r["encoder"] == e] for e in ENCODERS}
    ident = by_encoder["identity"]
    if not ident:
        return {"goal": goal, "met": None, "why": "identity was not run"}
    ident_acc = float(np.mean([r["acc"] for r in ident]))
    ident_nmi = float(np.mean([r["nmi"] for r in ident]))
    checks: dict[str, bool] = {
        f"{r['method']} seed {r['seed']} NMI >= 0.8x identity": bool(r["nmi"] >= 0.8 * ident_nmi)
        for r in tell
    }
    if specific == "wordnet" and by_encoder["mlp"]:
        mlp = by_encoder["mlp"]
        checks["mlp mean ACC >= identity + 0.02"] = bool(
            np.mean([r["acc"] for r in mlp]) >= ident_acc + 0.02
        )
        checks["mlp mean NMI >= identity + 0.02"] = bool(
            np.mean([r["nmi"] for r in mlp]) >= ident_nmi + 0.02
        )
        checks["mlp every seed ACC >= identity mean - 0.01"] = all(
            r["acc"] >= ident_acc - 0.01 for r in mlp
        )
    if specific == "mnist" and by_encoder["mlp"]:
        mlp = by_encoder["mlp"]
        checks["mlp mean ACC >= 0.85"] = bool(np.mean([r["acc"] for r in mlp]) >= 0.85)
        checks["mlp every seed ACC >= 0.80"] = all(r["acc"] >= 0.80 for r in mlp)
    if specific == "mnist" and by_encoder["conv"]:
        checks["conv every seed >= 0.952 within 150 epochs"] = all(
            r["acc"] >= 0.952 and r["epochs"] <= epochs_limit for r in by_encoder["conv"]
        )
    if specific == "digits" and by_encoder["conv"]:
        conv = by_encoder["conv"]
        checks["conv mean ACC >= 0.86"] = bool(np.mean([r["acc"] for r in conv]) >= 0.86)
        checks["conv every seed ACC >= 0.82"] = all(r["acc"] >= 0.82 for r in conv)
    for r in jobs:
        checks[f"{r['method']} seed {r['seed']} ACC within 0.01 of the estimator's"] = bool(
            abs(r["acc_minus_estimator"]) <= 0.01
        )
    return {
        "goal": goal,
        "met": all(checks.values()),
        "checks": checks,
        "verdicts": verdicts_vs_labels(tell),
    }


def verdicts_vs_labels(tell_runs: list[dict]) -> dict[str, Any]:
    """Does the label-free verdict (learned encoder helped?) agree with the labels (its ACC
    above identity's on the same seed)? One entry per learned run, and the agreement rate."""
    identity = {r["seed"]: r for r in tell_runs if r["encoder"] == "identity"}
    rows = [
        {
            "method": r["method"],
            "seed": r["seed"],
            "label_free_helped": r["verdict"]["helped"],
            "labels_helped": bool(r["acc"] > identity[r["seed"]]["acc"]),
        }
        for r in tell_runs
        if r.get("verdict") and r["seed"] in identity
    ]
    agree = [r["label_free_helped"] == r["labels_helped"] for r in rows]
    return {"runs": rows, "agreement": float(np.mean(agree)) if agree else None}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:6.2f}"


def format_row(r: dict) -> str:
    ratio = r.get("inertia_vs_kmeans")
    clu = "-" if r["clu_loss"] is None else f"{r['clu_loss']:.7f}"
    epochs = f"{r['epochs']}" + (f"+{r['pretrain_epochs']}p" if r["pretrain_epochs"] else "")
    return (
        f"{r['seed']:>4}  {r['method']:<30} {_pct(r['acc'])} {_pct(r['nmi'])} {_pct(r['ari'])}"
        f"  {clu:>10}  {'-' if ratio is None else f'{ratio:.4f}':>7}  {epochs:>7}"
        f"  {r['wall_s']:8.1f}  {r['cpu_s']:8.1f}"
    )


HEADER = (
    f"{'seed':>4}  {'method':<30} {'ACC%':>6} {'NMI%':>6} {'ARI%':>6}  {'L_clu':>10}"
    f"  {'in/km':>7}  {'epochs':>7}  {'wall_s':>8}  {'cpu_s':>8}"
)


def format_summary(result: dict) -> str:
    lines = [f"{'method':<30} {'ACC% mean/min':>14} {'NMI% mean/min':>14} {'ARI% mean/min':>14}"
             f"  {'low-L_clu seed ACC%':>19}  {'wall_s':>7}  {'cpu_s':>7}"]  # fmt: skip
    for method, s in result["summary"].items():
        cells = [
            f"{_pct(s[k]['mean'])}/{_pct(s[k]['min']).strip():>6}" for k in ("acc", "nmi", "ari")
        ]
        best = s.get("lowest_clu_loss_seed")
        pick = "-" if best is None else f"{_pct(best['acc'])} (seed {best['seed']})"
        lines.append(
            f"{method:<30} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}  {pick:>19}"
            f"  {s['wall_s_mean']:7.1f}  {s['cpu_s_mean']:7.1f}"
        )
    for name, values in result["references"].items():
        kind = "ACC% per seed" if len(values) != 3 else "ACC% / NMI% / ARI%"
        lines.append(f"{name:<46} {' / '.join(f'{v:.2f}' for v in values)}  ({kind})")
    lines.append(f"goal: {json.dumps(result['goal'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1. Got {args.seeds}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device.")
    encoders = tuple(args.encoder or DEFAULT_ENCODERS[args.dataset])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = machine_info(device=args.device)
    if args.device == "cuda" and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    X, y, data = load_data(args.dataset, args.subset)
    x_flat = X.reshape(X.shape[0], -1)
    k = data["n_clusters"]
    params = {enc: tell_params(args, enc, data) for enc in encoders}
    print(f"quality on {args.dataset}: {data['rows']} rows x {data['shape']}, k={k}; "
          f"{machine['cpu_count']} CPUs, torch threads {machine['torch_threads']}, "
          f"device {args.device}")  # fmt: skip
    for enc, p in params.items():
        print(f"  TELL {enc}: {p}")
    print(HEADER, flush=True)
    runs: list[dict] = []
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:
        km = None
        if args.kmeans_n_init > 0:
            km = {"seed": seed, **run_kmeans(x_flat, y, k, args.kmeans_n_init, seed)}
            km["inertia_vs_kmeans"] = 1.0
            runs.append(km)
            print(format_row(km), flush=True)
        for enc in encoders:
            r = {"seed": seed, **run_tell(X, x_flat, y, params[enc], seed)}
            r["inertia_vs_kmeans"] = r["inertia"] / km["inertia"] if km else None
            runs.append(r)
            print(format_row(r), flush=True)
            if args.job_workers and enc != "identity":
                j = {"seed": seed, **run_job(X, x_flat, y, params[enc], seed, args.job_workers)}
                j["inertia_vs_kmeans"] = j["inertia"] / km["inertia"] if km else None
                j["acc_minus_estimator"] = j["acc"] - r["acc"]
                runs.append(j)
                print(format_row(j), flush=True)
        if seed != seeds[-1]:  # a long run leaves its finished seeds on disk
            _write(args, _result(args, argv, machine, data, params, runs), quiet=True)
    finish(machine)
    result = _result(args, argv, machine, data, params, runs)
    print()
    print(format_summary(result))
    _write(args, result)
    return result


def _write(args: argparse.Namespace, result: dict, quiet: bool = False) -> None:
    out = Path(args.out or f"bench-results/quality-{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if not quiet:
        print(f"wrote {out}")


def _result(
    args: argparse.Namespace,
    argv: list[str] | None,
    machine: dict,
    data: dict,
    params: dict,
    runs: list[dict],
) -> dict:
    """The JSON of the runs made so far, exactly as written."""
    result = {
        "benchmark": "quality",
        "dataset": args.dataset,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "data": data,
        "tell_params": params,
        "tell_input": "rows as loaded (the mlp standardises them inside the model)",
        "kmeans_params": {"init": "k-means++", "n_init": args.kmeans_n_init}
        if args.kmeans_n_init > 0
        else None,
        "notes": {
            "scores": "ACC/NMI/ARI as fractions in JSON, % in the printed table",
            "inertia": "k-means objective of each partition on the k-means input "
            "(raw pixels / embeddings): sum of squared distances to the cluster MEANS",
            "epochs": "TELL: clustering epochs (+ pretraining epochs); k-means: Lloyd "
            "iterations of the kept init",
            "wall_s": "TELL: whole fit incl. pretraining, init and final assignment; "
            "k-means: all n_init restarts",
            "cpu_s": "CPU time of this process over the same span (user+system, all "
            "threads); on a shared machine wall_s / cpu_s shows the contention",
        },
        "runs": runs,
    }
    result["summary"] = summarize(runs)
    result["references"] = REFERENCES[args.dataset]
    result["goal"] = check_goal(args.dataset, runs, subset=args.subset is not None)
    return json.loads(json.dumps(result, default=_json_default))  # what is written, exactly


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
