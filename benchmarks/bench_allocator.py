"""Training steps with glibc's default malloc against ``fast.reuse_freed_memory()``, for both models.

``reuse_freed_memory`` is process-wide and permanent, so each setting runs in processes of its own:
a child loads this package's model and transformers' ``GPT2LMHeadModel`` (same random weights, plain
``from_pretrained``), applies the setting (or not), runs untimed steps until its heap has grown, then
times training steps (forward + backward + AdamW) of the two in turn. Children of the two settings
alternate (default, reuse, reuse, default, ...) so that load from elsewhere hits both. Per step it also
records the minor page faults and system time of the process, and each child its peak RSS (both models
and their optimizer states: compare settings with it, not models). The result goes to
``benchmarks/results/allocator-<UTC time>.json`` and ``allocator-latest.md``::

    .venv/bin/python benchmarks/bench_allocator.py                     # 1 and all threads, 4×128 and 4×256
    .venv/bin/python benchmarks/bench_allocator.py --preset tiny --rounds 1 --steps 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_speed import (
    RESULTS,
    load,
    load_average,
    measured_on,
    random_ids,
    result_header,
    train_step_fn,
    write_folders,
    write_result,
)

SETTINGS = ("default", "reuse")
MODELS = ("ours", "transformers")


def child(setting: str, folders: dict[str, Path], args) -> dict:
    """Time both models' training steps in this process under ``setting`` (at ``args.threads[0]`` threads,
    batch × ``args.seqs[0]``); per model, per timed step."""
    from gpt2scratch import fast

    torch.set_num_threads(args.threads[0])
    applied = fast.reuse_freed_memory() if setting == "reuse" else False
    steps = {}
    for name in MODELS:
        model = load(name if name == "ours" else "hf", folders[name])
        ids = random_ids(model.config.vocab_size, args.batch, args.seqs[0])
        steps[name] = train_step_fn(model, ids, torch.optim.AdamW(model.parameters(), lr=1e-4))
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    figures = {name: {"seconds": [], "faults": [], "system_s": []} for name in MODELS}
    for r in range(args.steps):
        for name in MODELS if r % 2 == 0 else reversed(MODELS):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            steps[name]()
            seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            figures[name]["seconds"].append(seconds)
            figures[name]["faults"].append(after.ru_minflt - before.ru_minflt)
            figures[name]["system_s"].append(after.ru_stime - before.ru_stime)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"setting": setting, "applied": applied, "peak_rss_mb": round(peak), "models": figures}


def run_child(setting: str, root: Path, threads: int, seq: int, args) -> dict:
    command = [sys.executable, __file__, "--child", setting, "--folder", str(root), "--threads", str(threads)]
    command += ["--seqs", str(seq), "--batch", str(args.batch), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--preset", args.preset]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults for both
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{setting} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(root: Path, threads: int, seq: int, args) -> dict:
    """Children of both settings, alternating; per setting and model: best and median tokens/s, median
    faults and system seconds per step, and the children's peak RSS."""
    runs = {setting: [] for setting in SETTINGS}
    for r in range(args.rounds):
        for setting in SETTINGS if r % 2 == 0 else reversed(SETTINGS):
            runs[setting].append(run_child(setting, root, threads, seq, args))
    tokens = args.batch * seq
    summary = {}
    for setting, children in runs.items():
        summary[setting] = {"peak_rss_mb": [c["peak_rss_mb"] for c in children]}
        summary[setting]["applied"] = all(c["applied"] for c in children)
        for name in MODELS:
            seconds = [s for c in children for s in c["models"][name]["seconds"]]
            summary[setting][name] = {
                "best_tokens_per_s": round(tokens / min(seconds), 1),
                "median_tokens_per_s": round(tokens / statistics.median(seconds), 1),
                "faults_per_step": round(
                    statistics.median(f for c in children for f in c["models"][name]["faults"])
                ),
                "system_s_per_step": round(
                    statistics.median(s for c in children for s in c["models"][name]["system_s"]), 2
                ),
            }
    return {"threads": threads, "batch": args.batch, "seq": seq, "load_average": load_average(), **summary}


def markdown(result: dict) -> str:
    lines = [
        "# Training steps with freed memory reused (`fast.reuse_freed_memory`) against glibc's default malloc",
        "",
        f"{measured_on(result)}, preset {result['preset']}, fp32; {result['rounds']} "
        f"processes per setting, each {result['warmup']} untimed and {result['steps']} timed steps per model.",
        "",
        "| threads | shape | model | default: tokens/s best (median) | reused: tokens/s best (median) "
        "| speed-up (best) | page faults per step | system s per step | peak RSS of the process, MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["runs"]:
        d, r = m["default"], m["reuse"]
        for name in MODELS:
            rss = f"{max(d['peak_rss_mb'])} → {max(r['peak_rss_mb'])}" if name == "ours" else "(same process)"
            lines.append(
                f"| {m['threads']} | {m['batch']}×{m['seq']} | {name} "
                f"| {d[name]['best_tokens_per_s']} ({d[name]['median_tokens_per_s']}) "
                f"| {r[name]['best_tokens_per_s']} ({r[name]['median_tokens_per_s']}) "
                f"| {r[name]['best_tokens_per_s'] / d[name]['best_tokens_per_s']:.2f}× "
                f"| {d[name]['faults_per_step']} → {r[name]['faults_per_step']} "
                f"| {d[name]['system_s_per_step']} → {r[name]['system_s_per_step']} | {rss} |"
            )
        ratio = [
            m[s]["ours"]["best_tokens_per_s"] / m[s]["transformers"]["best_tokens_per_s"] for s in SETTINGS
        ]
        lines.append(
            f"| {m['threads']} | {m['batch']}×{m['seq']} | ours ÷ transformers | {ratio[0]:.2f}× | {ratio[1]:.2f}× "
            "| | | | |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    p.add_argument("--seqs", type=int, nargs="+", default=[128, 256], help="sequence lengths")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2, help="child processes per setting")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model (the heap grows meanwhile)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model and child")
    p.add_argument("--label", default="")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> Path | None:
    args = parse_args(argv)
    if args.child:
        folders = {"ours": args.folder / "gpt2scratch", "transformers": args.folder / "transformers"}
        print(json.dumps(child(args.child, folders, args)))
        return None
    result = {
        **result_header(args),
        "preset": args.preset,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "steps": args.steps,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-allocator-") as tmp:
        write_folders(args.preset, Path(tmp))
        for threads in args.threads:
            for seq in args.seqs:
                result["runs"].append(measure(Path(tmp), threads, seq, args))
                print(json.dumps(result["runs"][-1]), flush=True)
    return write_result(result, args.out, "allocator", markdown(result))


if __name__ == "__main__":
    main()
