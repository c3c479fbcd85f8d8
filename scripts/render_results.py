"""Regenerate README.md's Results section from bench-results/*.json (never typed by hand).

python scripts/render_results.py          # rewrites the block between the markers
python scripts/render_results.py --check  # exit 1 (one-line summary) if README.md is stale
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _pct(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} / {100 * stat['min']:.2f}"


def _quality(data: dict) -> list[str]:
    d = data.get("data", {})
    argv = " ".join(a for a in data.get("argv", []) if a != "quality")
    lines = [
        f"**Quality, {data['dataset']}** ({d.get('rows', '?')} rows, k={d.get('n_clusters', '?')}; "
        f"{data['summary'][next(iter(data['summary']))]['seeds']} seeds; "
        f"`python -m bench quality {argv}`)",
        "",
        "| method | ACC % mean / min | NMI % mean / min | ARI % mean / min | wall s |",
        "|---|---|---|---|---|",
    ]
    for method, s in data["summary"].items():
        lines.append(
            f"| {method} | {_pct(s['acc'])} | {_pct(s['nmi'])} | {_pct(s['ari'])} | "
            f"{s.get('wall_s_mean', float('nan')):.1f} |"
        )
    for ref, value in (data.get("references") or {}).items():
        lines.append(f"| {ref} (reference) | {value} | | | |")
    goal = data.get("goal")
    if isinstance(goal, dict) and "goal" in goal and not str(goal["goal"]).startswith("none"):
        met = goal.get("met")
        verdict = {True: "met", False: "not met"}.get(met) if isinstance(met, bool) else None
        if verdict is None:  # per-encoder verdicts: {"identity": {"vs_DATA.md": true}, ...}
            verdict = _verdicts(goal.get("met_by_mean"))
        lines += ["", f"Goal: {goal['goal']} — **{verdict}**."]
    return lines


def _verdicts(by_method: object) -> str:
    """{"identity": {"vs_DATA.md": true, "vs_measured_kmeans": false}} -> readable text."""
    if not isinstance(by_method, dict) or not by_method:
        return "not stated"
    words = {True: "met", False: "not met"}
    return "; ".join(
        f"{method}: "
        + ", ".join(f"{words.get(ok, ok)} {ref.replace('_', ' ')}" for ref, ok in refs.items())
        for method, refs in by_method.items()
        if isinstance(refs, dict)
    )


def _assign(data: dict) -> list[str]:
    lines = [
        "**Assignment kernel** (rows/s, d=128, k=1024; `python -m bench assign`)",
        "",
        "| threads | tell.assign | faiss IndexFlatIP k=1 | faiss k=2 | tell / faiss k=1 "
        "| % of GEMM |",
        "|---|---|---|---|---|---|",
    ]
    for run in data.get("kernel", []):
        r = run["rows_per_s"]
        lines.append(
            f"| {run['threads']} | {r['tell.assign']:.0f} | {r['faiss IndexFlatIP k=1']:.0f} | "
            f"{r['faiss IndexFlatIP k=2']:.0f} | "
            f"{r['tell.assign'] / r['faiss IndexFlatIP k=1']:.2f}x | "
            f"{run['pct_of_gemm']['tell.assign']:.0f}% |"
        )
    e2e = data.get("end_to_end", {})
    rows = [v for v in e2e.values() if isinstance(v, dict)]
    if rows:
        args = data.get("args", {})
        lines += [
            "",
            f"*End to end*: Parquet on S3 (SeaweedFS, loopback) -> `tell assign` with "
            f"{args.get('workers', '?')} actor(s) of {args.get('cpus_per_worker', '?')} CPU -> "
            "Parquet on S3, beside a plain pyarrow read + write copy of the same data.",
            "",
            "| rows | job rows/s | copy rows/s | job / copy | peak PSS MiB |",
            "|---|---|---|---|---|",
        ]
        copied = next((v for v in rows if "copy" in v), None)
        for v in rows:
            copy, ratio = v.get("copy", {}).get("rows_per_s"), ""
            if copy:
                ratio = f"{v['job']['rows_per_s'] / copy:.2f}"
            elif copied:  # the copy ran at one size only; its rate does not depend on N
                rate = copied["copy"]["rows_per_s"]
                ratio = f"{v['job']['rows_per_s'] / rate:.2f} (vs the {copied['rows']}-row copy)"
            lines.append(
                f"| {v['rows']} | {v['job']['rows_per_s']:.0f} | {_fmt(copy)} | {ratio} | "
                f"{v['peak_pss_mib']:.0f} |"
            )
        lines.append(f"\nPeak memory ratio across sizes: {_fmt(e2e.get('memory_ratio'))}.")
        if "marginal_job_vs_copy" in e2e:
            lines.append(
                f"Steady-state throughput (the extra rows of the larger run over its extra "
                f"time, start-up costs cancelled): {e2e['marginal_rows_per_s']:.0f} rows/s, "
                f"{e2e['marginal_job_vs_copy']:.2f}x the copy."
            )
    return lines


def _train(data: dict, source: str = "train.json") -> list[str]:
    p = data["params"]
    command = data.get("command") or "python -m bench train"
    lines = [
        f"**Distributed training, `{source}`** ({p['rows']} x {p['dim']}, k={p['k']}, "
        f"identity encoder, {p['cpus_per_worker']} CPU per worker; `{command}`)",
        "",
        "| workers | rows/s | rows/s per worker | job wall s | CPU s (all processes) |",
        "|---|---|---|---|---|",
    ]
    for run in data.get("throughput", {}).get("runs", []):
        lines.append(
            f"| {run['workers']} | {run['rows_per_s']:.0f} | {run['rows_per_s_per_worker']:.0f} "
            f"| {run['job_wall_s']:.1f} | {run['memory']['cpu_s_all_processes']:.1f} |"
        )
    converge = data.get("converge", {})
    if converge.get("runs"):
        lines += [
            "",
            "| method | inertia / best baseline | ACC % | wall s | wall / faiss | CPU / faiss |",
            "|---|---|---|---|---|---|",
        ]
        for run in converge["runs"]:
            p = run.get("params", {})
            name = run["method"]
            if name.startswith("TELL"):  # epochs, global batch, k-means++ sample rows
                name += f" e={p['epochs']} b={p['batch_size']} s={p['init_sample_rows']}"
            lines.append(
                f"| {name} | {run['inertia_vs_best_baseline']:.4f} | "
                f"{100 * run['acc']:.2f} | {run['total_s']:.1f} | {run['time_vs_faiss']:.2f} | "
                f"{run['cpu_vs_faiss']:.2f} |"
            )
        faiss = next((r for r in converge["runs"] if r["method"].startswith("faiss")), None)
        if faiss:
            lines += [
                "",
                f"In-memory methods are timed to labels of every row (faiss: train "
                f"{faiss['fit_s']:.1f} s + label {faiss['label_s']:.1f} s); the Ray jobs, "
                "whose labels come from `tell assign`, against faiss's training time.",
            ]
        summary = converge.get("summary", {})
        if summary.get("goal"):
            met = ", ".join(summary.get("goal_met_by") or []) or "none"
            lines += ["", f"Goal: {summary['goal']} — met by: {met}."]
    jobs = data.get("throughput", {}).get("runs", []) + data.get("convergence_jobs", [])
    if any(run.get("scan_s") is not None for run in jobs):
        lines += [
            "",
            "Where each job's wall time went, s (fixed = Ray Train start-up and shutdown, "
            "k-means++, checkpoints):",
            "",
            "| job | wall | scan | epochs | fixed |",
            "|---|---|---|---|---|",
        ]
        for run in jobs:
            if run.get("scan_s") is None:
                continue
            lines.append(
                f"| {run['workers']} worker(s), {run['epochs']} epoch(s), batch "
                f"{run['batch_size']} | {run['job_wall_s']:.1f} | {run['scan_s']:.1f} | "
                f"{run['epochs_s']:.1f} | {run['fit_s'] - run['epochs_s']:.1f} |"
            )
    memory_runs = data.get("memory", {}).get("runs", [])
    if memory_runs:
        roles = ("driver", "train worker", "data task")
        how = {True: "features materialized", False: "streaming from Parquet"}
        paths = ", ".join(sorted({how.get(r.get("materialized"), "?") for r in memory_runs}))
        lines += [
            "",
            f"Peak memory per process, MiB, private (RSS), {memory_runs[0]['workers']} "
            f"workers, {paths}:",
            "",
            "| rows | " + " | ".join(roles) + " |",
            "|---|" + "---|" * len(roles),
        ]
        for run in memory_runs:
            by_role = run["memory"]["by_role"]
            cells = [
                f"{by_role[role]['max_peak_private_mib']:.0f} "
                f"({by_role[role]['max_peak_rss_mib']:.0f})"
                if role in by_role
                else ""
                for role in roles
            ]
            lines.append(f"| {run['rows']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "RSS also counts the object-store (shared memory) pages a process touched: "
            "bounded by the node's object store, counted once per node.",
        ]
    load = data.get("machine", {})
    if load.get("load_avg_start"):
        lines.append("")
        lines.append(
            f"Load average during the run: {load['load_avg_start'][0]:.1f} at the start, "
            f"{load.get('load_avg_end', ['?'])[0]} at the end ({load.get('cpu_count')} CPUs)."
        )
    return lines


def _generic(name: str, data: dict) -> list[str]:
    lines = [f"**{name}**", ""]
    tables = data.get("tables") or {}
    for title, rows in tables.items():
        if not rows:
            continue
        cols = list(rows[0])
        lines += [f"*{title}*", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
        lines.append("")
    for goal in data.get("goals", []):
        verdict = {True: "met", False: "not met", None: "not measured"}[goal.get("met")]
        lines.append(
            f"- Goal: {goal['goal']} — measured {goal.get('measured', '?')}: **{verdict}**"
        )
    return lines


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None else str(value)


def render() -> str:
    blocks = []
    for path in sorted((ROOT / "bench-results").glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("benchmark") == "quality":
            blocks.append("\n".join(_quality(data)))
        elif data.get("benchmark") == "assign":
            blocks.append("\n".join(_assign(data)))
        elif data.get("benchmark") == "train":
            blocks.append("\n".join(_train(data, path.name)))
        else:
            blocks.append("\n".join(_generic(path.stem, data)))
    header = "Generated by `python scripts/render_results.py` from `bench-results/*.json`."
    return "\n\n".join([header, *blocks])


_SECTION = re.compile(re.escape(START) + ".*?" + re.escape(END), flags=re.S)


def rendered_readme(text: str) -> str:
    """``text`` (README.md) with its results section replaced by :func:`render`."""
    body = f"{START}\n{render()}\n{END}"
    return _SECTION.sub(lambda _: body, text)


def stale_summary(current: str, expected: str) -> str | None:
    """None when the two READMEs agree; else one line saying how the results section differs."""
    if current == expected:
        return None
    old = _SECTION.search(current).group(0).splitlines()
    new = _SECTION.search(expected).group(0).splitlines()
    changed = [
        op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
        if op[0] != "equal"
    ]  # fmt: skip
    removed = sum(i2 - i1 for _, i1, i2, _, _ in changed)
    added = sum(j2 - j1 for _, _, _, j1, j2 in changed)
    first = changed[0][1] if changed else 0
    line = current[: _SECTION.search(current).start()].count("\n") + first + 1
    sample = (old[first] if first < len(old) else "").strip()[:80]
    return (
        f"README.md results section is stale: {removed} line(s) out, {added} in, first at "
        f"README.md:{line} ({sample!r}); run python scripts/render_results.py"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 with a one-line summary when README.md's results differ",
    )
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    readme = args.readme
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme.name} has no results markers", file=sys.stderr)
        return 1
    expected = rendered_readme(text)
    if args.check:
        problem = stale_summary(text, expected)
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(f"{readme.name} results section is up to date")
        return 0
    readme.write_text(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
