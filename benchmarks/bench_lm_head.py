"""The LM head on CPU without autograd: ``h @ Wᵀ`` (what ``nn.Linear`` does) against ``(W @ hᵀ)ᵀ`` (what
``GPT2ScratchForCausalLM.head_logits`` does for more than one row), GPT-2's head shape (50257 × 768, fp32).

Both forms are timed in turn at each row count (batch × kept positions) and thread count, best of several
runs; the result (JSON + a Markdown table) goes to ``benchmarks/results/lm-head-<date>.{json,md}``::

    .venv/bin/python benchmarks/bench_lm_head.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def best_ms(fn, runs: int, calls: int) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def measure(rows: int, threads: int, vocab: int, n_embd: int, runs: int) -> dict:
    torch.set_num_threads(threads)
    weight, h = torch.randn(vocab, n_embd) * 0.02, torch.randn(rows, n_embd)
    linear = lambda: torch.nn.functional.linear(h, weight)  # noqa: E731
    transposed = lambda: torch.mm(weight, h.t()).t().contiguous()  # noqa: E731
    calls = max(1, 64 // rows)
    with torch.no_grad():
        diff = (linear() - transposed()).abs().max().item()
        a, b = best_ms(linear, runs, calls), best_ms(transposed, runs, calls)
        a, b = min(a, best_ms(linear, runs, calls)), min(b, best_ms(transposed, runs, calls))  # interleaved
    return {"rows": rows, "threads": threads, "linear_ms": round(a, 2), "transposed_ms": round(b, 2),
            "speedup": round(a / b, 2), "max_abs_diff": diff}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 512, 1024])
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [measure(r, t, 50257, 768, args.runs) for t in args.threads for r in args.rows]
    date = datetime.date.today().isoformat()
    result = {
        "benchmark": "lm_head", "date": date, "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "torch": torch.__version__, "mkl": torch.backends.mkl.is_available(),
        "load_average": os.getloadavg(), "results": rows,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"lm-head-{date}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# LM head, h @ Wᵀ vs (W @ hᵀ)ᵀ — {date}",
        "",
        f"GPT-2's head (50257 × 768, fp32), no autograd, torch {torch.__version__} (MKL: {result['mkl']}), "
        f"{os.cpu_count()} cores, load average {result['load_average'][0]:.2f} at the start; best of "
        f"{args.runs} runs × 2, the two forms in turn. `benchmarks/bench_lm_head.py`.",
        "",
        "| rows | threads | h @ Wᵀ (nn.Linear), ms | (W @ hᵀ)ᵀ, ms | speedup | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rows']} | {r['threads']} | {r['linear_ms']} | {r['transposed_ms']} | {r['speedup']}× | "
        f"{r['max_abs_diff']:.1e} |"
        for r in rows
    ]
    (args.out / f"lm-head-{date}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
