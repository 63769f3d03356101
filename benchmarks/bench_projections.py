"""GPT-2's projections on CPU without autograd: ``nn.Linear`` against the model's ``project``.

``project`` (in ``modeling_gpt2scratch.py``) is what every block and the LM head call: on a row-major
weight over ``ONEDNN_MIN_ROWS`` to ``ONEDNN_SWAPPED_MAX_ROWS`` rows (q/k/v and the MLP input from 2 rows) it
calls oneDNN's inner product with the roles swapped, (W xᵀ)ᵀ; on a wide row-major weight over more rows (any
row-major weight on a CPU with AVX-512, ``ONEDNN_EVERY_PRODUCT``, where every weight but the head goes as it
is from 2 rows, q/k/v and the MLP input unswapped below 8, and the head from 6), oneDNN as is; otherwise, with more than
one thread and at most ``SPLIT_MAX_ROWS`` rows it splits the output features across the threads in one
batched matmul (MKL), and a row-major LM head over 2 to ``HEAD_TRANSPOSED_MAX_ROWS`` rows takes (W hᵀ)ᵀ. One-row ``generate`` holds the weights column-major
(``set_weight_layout``; without FBGEMM only the wide ones, out > in), which is transformers' ``Conv1D``
memory layout, and ``project`` runs a one-row product on such a weight as an embedding-bag sum
(``bag_product``, one bag per thread). This times ``nn.Linear``, ``project``, ``project`` without the
swapped roles and ``project`` with oneDNN turned off on row-major weights, and ``project`` on column-major
ones with and without the embedding bags (``BAG_PRODUCTS``), for each projection
shape of the 124M model (12 layers' worth of weights, so that, as in decoding, they do not sit in the
cache), at each row count and thread count, best of several runs, in turn; the result goes to
``benchmarks/results/projections-<date>.{json,md}``::

    .venv/bin/python benchmarks/bench_projections.py
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
from torch import nn

from gpt2scratch import modeling_gpt2scratch as modeling
from gpt2scratch.modeling_gpt2scratch import project, set_weight_layout

RESULTS = Path(__file__).resolve().parent / "results"
C, V, LAYERS = 768, 50257, 12
SHAPES = {  # name: (in, out, copies)
    "attn.c_attn": (C, 3 * C, LAYERS),
    "attn.c_proj": (C, C, LAYERS),
    "mlp.c_fc": (C, 4 * C, LAYERS),
    "mlp.c_proj": (4 * C, C, LAYERS),
    "lm_head": (C, V, 1),
}


def best_ms(fn, runs: int) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def measure(name: str, rows: int, threads: int, runs: int) -> dict:
    torch.set_num_threads(threads)
    fan_in, fan_out, copies = SHAPES[name]
    head = name == "lm_head"
    layers = [nn.Linear(fan_in, fan_out, bias=not head) for _ in range(copies)]
    column_major = [nn.Linear(fan_in, fan_out, bias=not head) for _ in range(copies)]
    for layer, twin in zip(layers, column_major, strict=True):
        twin.load_state_dict(layer.state_dict())
    set_weight_layout(nn.ModuleList(column_major), column_major=True)
    x = torch.randn(rows, fan_in)
    plain = lambda: [layer(x) for layer in layers]  # noqa: E731
    ours = lambda: [project(layer, x, head=head) for layer in layers]  # noqa: E731
    ours_column = lambda: [project(layer, x, head=head) for layer in column_major]  # noqa: E731
    unswapped = with_setting(ours, "ONEDNN_SWAPPED_MAX_ROWS", 0)
    no_bags = with_setting(ours_column, "BAG_PRODUCTS", False)
    fns = (plain, ours, unswapped, with_setting(ours, "ONEDNN_LINEAR", False), ours_column, no_bags)
    with torch.no_grad():
        reference = plain()
        diff = max((a - b).abs().max().item() for fn in fns[1:] for a, b in zip(reference, fn(), strict=True))
        times = [best_ms(fn, runs) for fn in fns]
        a, b, u, m, c, o = (min(t, best_ms(fn, runs)) for t, fn in zip(times, fns, strict=True))
    weight_bytes = copies * fan_in * fan_out * 4
    return {"projection": name, "rows": rows, "threads": threads, "linear_ms": round(a / copies, 3),
            "project_ms": round(b / copies, 3), "speedup": round(a / b, 2),
            "project_unswapped_ms": round(u / copies, 3), "unswapped_speedup": round(a / u, 2),
            "project_mkl_ms": round(m / copies, 3), "mkl_speedup": round(a / m, 2),
            "project_column_major_ms": round(c / copies, 3), "column_major_speedup": round(a / c, 2),
            "column_major_gb_s": round(weight_bytes / c / 1e6, 1),
            "column_major_no_bags_ms": round(o / copies, 3), "bag_speedup": round(o / c, 2),
            "max_abs_diff": diff}  # fmt: skip


def with_setting(fn, name: str, value):
    """``fn`` run with the model file's ``name`` set to ``value``: ``ONEDNN_LINEAR`` False leaves the MKL
    paths alone; ``ONEDNN_SWAPPED_MAX_ROWS`` 0 turns the swapped roles off; ``BAG_PRODUCTS`` False runs
    one-row products on column-major weights as for more rows (MKL); ``bench_gemm.py`` switches
    ``ONEDNN_EVERY_PRODUCT`` with it."""

    def run():
        saved = getattr(modeling, name)
        setattr(modeling, name, value)
        try:
            return fn()
        finally:
            setattr(modeling, name, saved)

    return run


def _every(result: dict) -> str:
    """What ``ONEDNN_EVERY_PRODUCT`` (an AVX-512 host) adds to the routing, in the table's words."""
    if not result.get("onednn_every_product"):
        return ""
    return (
        f" (with AVX-512 on every weight, and as is on all but the head from {modeling.EVERY_MIN_ROWS} "
        f"rows and on the head from {modeling.EVERY_HEAD_MIN_ROWS})"
    )


def markdown(result: dict, runs: int) -> str:
    lines = [
        f"# Projections: nn.Linear vs `project` — {result['date']}",
        "",
        f"GPT-2 124M shapes, fp32, no autograd, torch {result['torch']}, {result['cores']} cores "
        f"({result['cpu']}), load average {result['load_average'][0]:.2f} at the start; per-layer time, best "
        f"of {runs} runs × 2, in turn. Speedups are over `nn.Linear` on the row-major weight. `project` on a "
        f"row-major weight (oneDNN available: {result.get('onednn')}): oneDNN with the roles swapped over "
        f"{modeling.ONEDNN_MIN_ROWS}-{result.get('swapped_max_rows')} rows (q/k/v and MLP input from 2 without "
        f"AVX-512), oneDNN as is on the wide weights over more rows{_every(result)}, MKL paths otherwise; the "
        "unswapped "
        "column turns the swapped roles off, the MKL column oneDNN altogether. Column-major is how "
        f"one-row `generate()` holds the weights (the memory layout of transformers' `Conv1D`; embedding bags "
        f"available: {result.get('bags')}; without them the square and narrow weights stay row-major). "
        "`project` runs a one-row product on a column-major weight as an embedding bag; the no-bags column "
        "turns that off (the bag speedup is over it). "
        "`benchmarks/bench_projections.py`.",
        "",
        "| projection | rows | threads | nn.Linear, ms | project, ms | speedup | project unswapped, ms | speedup "
        "| project MKL only, ms | speedup | project column-major, ms | speedup | column-major GB/s "
        "| column-major, no bags, ms | bag speedup | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['projection']} | {r['rows']} | {r['threads']} | {r['linear_ms']} | {r['project_ms']} | "
        f"{r['speedup']}× | {r['project_unswapped_ms']} | {r['unswapped_speedup']}× | "
        f"{r['project_mkl_ms']} | {r['mkl_speedup']}× | {r['project_column_major_ms']} | "
        f"{r['column_major_speedup']}× | {r['column_major_gb_s']} | {r['column_major_no_bags_ms']} | "
        f"{r['bag_speedup']}× | {r['max_abs_diff']:.1e} |"
        for r in result["results"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--projections", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    date = datetime.date.today().isoformat()
    result = {
        "benchmark": "projections", "date": date, "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "torch": torch.__version__, "load_average": os.getloadavg(),
        "onednn": modeling.ONEDNN_LINEAR, "bags": modeling.BAG_PRODUCTS, "swapped_max_rows": modeling.ONEDNN_SWAPPED_MAX_ROWS,
        "onednn_every_product": modeling.ONEDNN_EVERY_PRODUCT,
        "results": [measure(name, rows, threads, args.runs)
                    for threads in args.threads for name in args.projections for rows in args.rows],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"projections-{date}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, args.runs)
    (args.out / f"projections-{date}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
