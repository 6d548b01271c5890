"""Benchmark: the full entanglement run (vocabulary set + autoregressive lengths 1-4) on the
embedded SmolLM2, as `configs/entanglement/quick.yaml` sets it up.

Reports wall and CPU time, peak resident memory, each step's time (from record.json), and the
phase-1 work of the prefix trie against one forward pass per candidate string. The load average
is printed too: on a shared machine it explains slow numbers.

    SUBLENS_CACHE=... python benchmarks/bench_entanglement.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from sublens.config import load_config
from sublens.experiments import run_experiment
from sublens.experiments.entanglement import EntanglementConfig
from sublens.runs import read_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "entanglement" / "quick.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--out", type=Path, default=None, help="parent of the run directory")
    args = parser.parse_args()
    config = load_config(EntanglementConfig, args.config, args.overrides)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_entanglement_"))

    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = run_experiment("entanglement", config, out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    load_after = os.getloadavg()

    record = read_json(outcome.path / "record.json")
    results = outcome.results
    work = results["phase1_work"]
    trie = sum(w["prompt_tokens"] + w["node_tokens"] for w in work.values())
    naive = sum(w["naive_tokens"] for w in work.values())
    n_sets = {name: info["n_candidates"] for name, info in results["sets"].items()}
    numbers = pd.read_parquet(outcome.path / "numbers.parquet")
    cumulative = results.get("cumulative", {}).get("sets", {})
    prompts2 = (
        1
        + numbers["number"].nunique()
        + len(results["template_control"]["words"])
        + sum(len(v["per_order"]) for cats in cumulative.values() for v in cats.values())
    )

    print()
    print(f"entanglement benchmark: {config.model}, sets {config.sets}, lengths {config.lengths}, k={config.k}")
    print(f"  candidates per set: {n_sets}; k per set: {results['k']}")
    print(
        f"  phase 2 prompts: {prompts2} ({numbers['number'].nunique()} distinct numbers, "
        f"{len(numbers)} (set, number) rows)"
    )
    print(
        f"  wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {peak_mib:.0f} MiB, "
        f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}, cpus {os.cpu_count()}"
    )
    print(
        f"  load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (>2 on 2 cores: the machine was shared)"
    )
    print("  steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in record["timings"].items()))
    print(
        f"  phase 1 tokens through the model: {trie:,} with KV reuse + prefix trie vs "
        f"{naive:,} with one forward pass per string (x{naive / trie:.0f})"
    )
    print(f"  run directory: {outcome.path}")
    for line in results["report"][:2]:
        print(f"  {line}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
