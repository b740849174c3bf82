"""Plot a Nexmark run: events/s per query for Weir, Flink and the
hand-written differential ceiling, from `weir-bench nexmark` JSON files
(one run, or several runs of the same event count, taken together; where
two give a figure for the same query and system, the later file's
counts).

    python3 benches/plot.py benches/results/nexmark-<stamp>.json [more.json ...] [--out out.png] [--workers N]

Needs matplotlib (`python3 -m pip install matplotlib`). Writes
benches/nexmark.png unless told otherwise.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    argv = sys.argv[1:]
    workers, out, files = 2, "benches/nexmark.png", []
    while argv:
        a = argv.pop(0)
        if a == "--workers":
            workers = int(argv.pop(0))
        elif a == "--out":
            out = argv.pop(0)
        elif a.endswith(".png"):
            out = a
        else:
            files.append(a)
    runs = [json.load(open(f)) for f in files]
    if len({r["events"] for r in runs}) != 1:
        sys.exit("the runs differ in their event counts")
    run = {"events": runs[0]["events"]}
    for key in ("runs", "flink", "ceiling"):
        run[key] = [x for r in runs for x in r.get(key, [])]

    def rates(key):
        return {
            r["query"]: r["events_per_s"]
            for r in run.get(key, [])
            if r.get("workers") == workers and r.get("events_per_s")
        }

    series = [("Weir", rates("runs")), ("Flink (PyFlink 2.3)", rates("flink")), ("differential, by hand", rates("ceiling"))]
    queries = list(dict.fromkeys(r["query"] for r in run["runs"] if r["workers"] == workers))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8, len(queries) * 0.7), 4.5))
    for i, (name, values) in enumerate(series):
        xs = [q for q in range(len(queries)) if queries[q] in values]
        ax.bar([x + (i - 1) * width for x in xs], [values[queries[x]] for x in xs], width, label=name)
    ax.set_xticks(range(len(queries)), queries)
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log scale)")
    ax.set_title(f"Nexmark, {run['events']:,} events, {workers} worker threads")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(series), frameon=False)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
