#!/usr/bin/env python3
"""Runs the criterion benches of benches/middleware.rs several times and prints, for each
group, the median over the runs of each bench's ratio to the static-header baseline (b) of the
same run. Absolute times drift by tens of percent on a shared 2-core machine; ratios measured
within one run do not.

    python3 benches/ratios.py [runs]        (default 5)
"""
import json
import pathlib
import statistics
import subprocess
import sys

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
CRITERION = pathlib.Path("target/criterion")
BASELINE = "b_static_header"

ratios = {}  # (group, bench) -> [ratio per run]
for run in range(RUNS):
    subprocess.run(
        ["cargo", "bench", "--bench", "middleware", "--",
         "--warm-up-time", "1", "--measurement-time", "3"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for group in sorted(p for p in CRITERION.iterdir() if p.is_dir() and p.name != "report"):
        medians = {}
        for bench in group.iterdir():
            estimates = bench / "new" / "estimates.json"
            if estimates.exists():
                medians[bench.name] = json.loads(estimates.read_text())["median"]["point_estimate"]
        if BASELINE not in medians:
            continue
        for bench, median in medians.items():
            ratios.setdefault((group.name, bench), []).append(median / medians[BASELINE])
    print(f"run {run + 1}/{RUNS} done", file=sys.stderr)

print(f"{'group':<22} {'bench':<20} {'median ratio to (b)':>20}   per run")
for (group, bench), values in sorted(ratios.items()):
    runs = " ".join(f"{v:.2f}" for v in values)
    print(f"{group:<22} {bench:<20} {statistics.median(values):>20.2f}   {runs}")
