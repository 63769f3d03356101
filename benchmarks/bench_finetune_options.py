"""What ``finetune``'s compute options cost and save, measured through the command itself.

Each variant (plain, ``--activation-checkpointing``, ``--compile``, …) is one ``gpt2scratch finetune --task lm``
run of a random GPT-2 (124M shape by default) on tinyshakespeare from ``../shared/data``, in its own process:
its peak RSS is that process's alone (``os.wait4``), its tokens/s the median over the logged steps after the
first (which also pays for loading and, under ``--compile``, for the compilation), and its losses are kept, so
a variant that changes the training shows it. Variants run in turn, ``--repeats`` times, keeping the least RSS
and the best median.

Usage::

    .venv/bin/python benchmarks/bench_finetune_options.py                    # 124M, 4 x 512, 4 steps
    .venv/bin/python benchmarks/bench_finetune_options.py --preset tiny --max-length 64 --steps 3   # smoke run

Each run writes ``benchmarks/results/finetune-options-<UTC time>.json`` and ``finetune-options-latest.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_speed import RESULTS, git_commit, load_average, machine_info, machine_label, versions

DATA = Path(os.environ.get("GPT2SCRATCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
VARIANTS = {
    "plain": [],
    "activation-checkpointing": ["--activation-checkpointing"],
    "compile": ["--compile"],
}


def finetune_command(args, variant: str, out: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "gpt2scratch", "finetune", "--task", "lm", "--model", f"init:{args.preset}"),
        *("--train-file", str(args.data / "corpora" / "tinyshakespeare.txt")),
        *("--tokenizer-dir", str(args.data / "gpt2_vocab"), "--output-dir", str(out), "--force"),
        *("--max-length", str(args.max_length), "--batch-size", str(args.batch_size)),
        *(
            "--max-steps",
            str(args.steps),
            "--log-every",
            "1",
            "--eval-max-batches",
            "1",
            "--max-new-tokens",
            "1",
        ),
        *("--seed", "1", "--dropout", "0"),
        *VARIANTS[variant],
    ]


def run_variant(args, variant: str, root: Path) -> dict:
    """One finetune process: its own peak RSS, tokens/s after the first step, losses."""
    out = root / variant
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    log = root / f"{variant}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            finetune_command(args, variant, out), stdout=f, stderr=subprocess.STDOUT, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"failed": log.read_text().strip().splitlines()[-3:]}
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    result = {
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "tokens_per_s": statistics.median(s["tokens_per_s"] for s in steps[1:]),
        "losses": [s["loss"] for s in steps],
    }
    if "mfu" in steps[-1]:  # on a GPU with a known peak
        result["mfu"] = statistics.median(s["mfu"] for s in steps[1:])
    return result


def measure(args) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name in args.variants:
                runs[name].append(run_variant(args, name, Path(tmp)))
                print(name, json.dumps(runs[name][-1]), flush=True)
    best = {}
    for name, results in runs.items():
        ok = [r for r in results if "failed" not in r]
        if not ok:
            best[name] = results[-1]
            continue
        best[name] = {
            "peak_rss_mb": min(r["peak_rss_mb"] for r in ok),
            "tokens_per_s": max(r["tokens_per_s"] for r in ok),
            "losses": ok[0]["losses"],
        }
        if "mfu" in ok[0]:
            best[name]["mfu"] = max(r["mfu"] for r in ok)
    return best


def markdown(result: dict) -> str:
    plain = result["variants"].get("plain", {})
    lines = [
        f"# `finetune` compute options ({result['date']})",
        "",
        f"Measured {result['date']} on {machine_label(result['machine'])}, torch {result['versions']['torch']}, "
        f"transformers {result['versions']['transformers']}, gpt2scratch {result['versions']['git_commit']}: "
        f"`finetune --task lm --model init:{result['preset']}` on tinyshakespeare, batch "
        f"{result['batch_size']} × {result['max_length']} tokens, {result['steps']} steps, fp32, dropout 0, "
        f"{result['threads']} thread(s), best of {result['repeats']} run(s) in turn. Load average before/after: "
        f"{result['load_avg_start']} → {result['load_avg_end']}.",
        "",
        "| variant | peak RSS, MB | ÷ plain | tokens/s (median after step 1) | ÷ plain | losses |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["variants"].items():
        if "failed" in r:
            lines.append(f"| {name} | failed: {' '.join(r['failed'])} | | | | |")
            continue
        rss = r["peak_rss_mb"] / plain["peak_rss_mb"] if plain.get("peak_rss_mb") else None
        tps = r["tokens_per_s"] / plain["tokens_per_s"] if plain.get("tokens_per_s") else None
        losses = ", ".join(f"{x:.4f}" for x in r["losses"])
        mfu = f" (MFU {r['mfu']:.1%})" if "mfu" in r else ""
        lines.append(
            f"| {name} | {r['peak_rss_mb']} | {_x(rss)} | {r['tokens_per_s']:.1f}{mfu} | {_x(tps)} | {losses} |"
        )
    return "\n".join(lines) + "\n"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    now = dt.datetime.now(dt.timezone.utc)
    result = {
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
        "versions": versions() | {"git_commit": git_commit()},
        **{
            k: getattr(args, k) for k in ("preset", "max_length", "batch_size", "steps", "threads", "repeats")
        },
        "load_avg_start": load_average(),
    }
    result["variants"] = measure(args)
    result["load_avg_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"finetune-options-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "finetune-options-latest.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
