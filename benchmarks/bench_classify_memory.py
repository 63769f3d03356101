"""Benchmark: peak memory of ``gpt2scratch classify --input-file`` as the CSV grows (it should stay flat).

    .venv/bin/python benchmarks/bench_classify_memory.py            # 100, 10k and 100k rows
    .venv/bin/python benchmarks/bench_classify_memory.py --rows 100 10000

Each size is a generated CSV (seeded; texts of 5-60 words, quoted commas and newlines included)
classified by ``init:tiny`` (a random 2-layer classifier: the model is not what is measured) in a fresh
process, one torch thread. The peak RSS is that process's ``ru_maxrss`` (from ``os.wait4``); the
100-row run is the baseline (imports + model). Target: the 100k-row peak within 10% of the 10k-row peak.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    'the a free call now win prize txt reply stop ok see you later lol home love, "quoted" £100 é 🙂'.split()
)


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i in range(rows):
            words = rng.choices(WORDS, k=rng.randint(5, 60))
            if i % 97 == 0:
                words.insert(3, "\n")
            writer.writerow([i, " ".join(words)])


def measure(csv_path: Path, out_path: Path, vocab: str | None) -> dict:
    """Run ``classify`` on ``csv_path`` in a fresh process; its peak RSS and wall time."""
    command = [
        sys.executable,
        "-m",
        "gpt2scratch.cli",
        "classify",
        "init:tiny",
        "--input-file",
        str(csv_path),
    ]
    command += ["--output-file", str(out_path), "--force", "--max-length", "64"]
    command += ["--tokenizer-dir", vocab] if vocab else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"classify failed:\n{err[-2000:]}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 10_000, 100_000])
    parser.add_argument("--tokenizer-dir", default=None, help="default: ../shared/data/gpt2_vocab")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            data = Path(tmp, f"rows-{rows}.csv")
            write_csv(data, rows)
            result = {
                "rows": rows,
                "csv_mib": data.stat().st_size / 2**20,
                **measure(data, Path(tmp, "out.csv"), args.tokenizer_dir),
            }
            results.append(result)
            print(json.dumps(result), flush=True)
    peaks = {r["rows"]: r["peak_rss_mib"] for r in results}
    verdict = None
    if 10_000 in peaks and 100_000 in peaks:
        verdict = peaks[100_000] <= 1.10 * peaks[10_000]
    stamp = datetime.datetime.now(datetime.timezone.utc)
    record = {
        "benchmark": "classify --input-file peak RSS",
        "date": stamp.isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "model": "init:tiny (2 layers, n_embd 64), --max-length 64, --batch-size 32 (default), 1 torch thread",
        "results": results,
        "target": "peak RSS at 100k rows within 10% of the 10k-row peak",
        "target_met": verdict,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"classify-memory-{stamp:%Y-%m-%d}"
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    lines = [
        f"# classify --input-file: peak RSS by input size ({record['date']})",
        "",
        f"Machine: {record['machine']}. Model: {record['model']}.",
        "",
        "| rows | CSV (MiB) | peak RSS (MiB) | wall (s) | CPU (s) |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['rows']:,} | {r['csv_mib']:.1f} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} |"
            for r in results
        ),
        "",
        f"Target ({record['target']}): {'met' if verdict else 'NOT met' if verdict is False else 'not measured'}.",
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
