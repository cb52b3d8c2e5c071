"""The benchmark suite: run the scenarios, print a table, write latest.json and latency.png.

    .venv/bin/python bench/run.py                  # everything (`make bench`, < 10 min on 2 cores)
    .venv/bin/python bench/run.py --quick          # smaller runs (`make bench-quick`, < 2 min)
    .venv/bin/python bench/run.py --only discovery vend_api --out /tmp/bench
    .venv/bin/python bench/run.py --only sales_report   # on request only (ON_REQUEST)

Each scenario module (bench/CONTRACT.md) starts the real processes it measures on
loopback, against a scratch PostgreSQL database ``bench_*`` and Redis database 14 (or
DATABASE_URL's server and REDIS_URL), and stops them. The exit status is 1 when a scenario
could not run (its error is in the JSON), 0 otherwise, whether or not targets were met.
"""

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import exit_on_sigterm, machine_info, services_available  # noqa: E402

# In this order; a module that does not exist (yet) is skipped.
MODULES = [
    "vend_api",
    "serial_vend",
    "wifi_vend",
    "discovery",
    "poll_ceiling",
    "fleet_polling",
    "notify",
]
# Run only when named with --only (too long for the default run).
ON_REQUEST = ["sales_report", "overload"]
RESULTS = ROOT / "bench" / "results"
ROW_KEYS = ("metric", "unit", "count", "errors", "p50", "p95", "p99", "max", "target", "met")


def load_scenarios(named: list[str] | None = None) -> list:
    scenarios = []
    for name in MODULES + [name for name in ON_REQUEST if name in (named or ())]:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"bench: no bench/{name}.py, skipped", file=sys.stderr)
                continue
            raise
        follows = isinstance(getattr(module, "NAME", None), str) and callable(
            getattr(module, "run", None)
        )
        if not follows:
            print(f"bench: bench/{name}.py lacks NAME or run(), skipped", file=sys.stderr)
            continue
        scenarios.append(module)
    return scenarios


def run_one(module, quick: bool) -> dict:
    started = time.monotonic()
    try:
        result = module.run(quick)
        check_result(result, module.NAME)
    except Exception:  # noqa: BLE001 - one broken scenario must not hide the others' figures
        result = {
            "scenario": module.NAME,
            "rows": [],
            "notes": [],
            "error": traceback.format_exc(limit=8),
        }
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def check_result(result: dict, name: str) -> None:
    """The contract, checked so a scenario that breaks it fails loudly, not the chart."""
    if result.get("scenario") != name:
        raise ValueError(f"scenario {name!r} returned scenario={result.get('scenario')!r}")
    if not isinstance(result.get("notes"), list):
        raise ValueError(f"{name}: notes must be a list of strings")
    for row in result.get("rows", []):
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"{name}: row {row.get('metric')!r} lacks {missing}")


def table(results: list[dict]) -> str:
    header = (
        f"{'scenario':<14} {'metric':<46} {'count':>6} {'p50':>8} {'p95':>8} {'p99':>8} "
        f"{'max':>8} {'errors':>6}  {'target':<20} met?"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        if result.get("error"):
            last = result["error"].strip().splitlines()[-1]
            lines.append(f"{result['scenario']:<14} ERROR: {last}")
            continue
        for row in result["rows"]:
            met = {True: "yes", False: "NO", None: "-"}[row["met"]]
            lines.append(
                f"{result['scenario']:<14} {row['metric'][:46]:<46} {row['count']:>6} "
                f"{row['p50']:>8.1f} {row['p95']:>8.1f} {row['p99']:>8.1f} {row['max']:>8.1f} "
                f"{row['errors']:>6}  {row['target'][:20]:<20} {met}"
            )
    lines.append("(latencies in ms)")
    return "\n".join(lines)


def chart(results: list[dict], path: Path, machine: dict) -> None:
    """Horizontal bars, p50/p95/p99 per metric (log scale: 1 ms and 2 s share the page)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r["scenario"], row) for r in results for row in r.get("rows", []) if row["count"]]
    height = max(3.0, 0.7 * len(rows) + 1.6)
    figure, axes = plt.subplots(figsize=(11, height))
    if not rows:
        axes.text(0.5, 0.5, "no figures", ha="center", va="center")
        axes.set_axis_off()
    else:
        verdict = {True: "met", False: "NOT met", None: ""}
        labels = [
            f"{scenario}: {row['metric']}\n"
            f"{row['p50']:.1f} / {row['p95']:.1f} / {row['p99']:.1f} ms"
            + (f"  ({row['target']}: {verdict[row['met']]})" if row["met"] is not None else "")
            for scenario, row in rows
        ]
        positions = range(len(rows))
        bar = 0.26
        for offset, (stat, colour) in enumerate(
            [("p50", "#4c72b0"), ("p95", "#dd8452"), ("p99", "#c44e52")]
        ):
            values = [max(row[stat], 0.01) for _, row in rows]
            axes.barh(
                [p + (offset - 1) * bar for p in positions],
                values,
                height=bar,
                color=colour,
                label=stat,
            )
        axes.set_yticks(list(positions), labels, fontsize=8)
        axes.invert_yaxis()
        axes.set_xscale("log")
        axes.set_xlabel("latency, ms (log scale): p50 / p95 / p99")
        axes.legend(loc="lower right", fontsize=8)
        axes.grid(axis="x", which="both", alpha=0.3)
        right = max(row["p99"] for _, row in rows)
        axes.set_xlim(left=0.1, right=max(right * 3, 10))
    axes.set_title(
        f"vending latency per scenario - {machine['cpu_count']} CPUs, {machine['db']}, "
        f"Python {machine['python']}, {machine['git_commit'][:12]}, {machine['date']}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (< 2 min in all)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="scenarios to run, by NAME")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    scenarios = load_scenarios(args.only)
    if args.only:
        known = {module.NAME for module in scenarios} | set(ON_REQUEST)
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; known: {sorted(known)}")
        scenarios = [module for module in scenarios if module.NAME in args.only]
    missing = services_available()
    if missing:
        print(f"bench: not available: {missing}", file=sys.stderr)

    machine = machine_info()
    started = time.monotonic()
    results = []
    for module in scenarios:
        print(f"bench: {module.NAME} ...", file=sys.stderr, flush=True)
        result = run_one(module, args.quick)
        print(f"bench: {module.NAME} done in {result['seconds']} s", file=sys.stderr, flush=True)
        results.append(result)

    report = {
        "machine": machine,
        "quick": args.quick,
        "services_missing": missing,
        "total_seconds": round(time.monotonic() - started, 1),
        "scenarios": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(results, args.out / "latency.png", machine)
    print(table(results))
    for result in results:
        for note in result.get("notes", []):
            print(f"  {result['scenario']}: {note}")
        if result.get("error"):
            print(f"\n{result['scenario']} failed:\n{result['error']}", file=sys.stderr)
    print(
        f"{len(results)} scenario(s) in {report['total_seconds']} s; "
        f"wrote {os.path.relpath(args.out / 'latest.json')} and "
        f"{os.path.relpath(args.out / 'latency.png')}"
    )
    return 1 if any(result.get("error") for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
