"""Where the time of a batch-1 decode step goes on the CPU: plain ``generate()`` split into the weight
products, the model's other ops and ``generate()``'s own loop, beside the memory-bandwidth floor.

Per thread count, on one model (plain ``from_pretrained``, random weights), each measured in turn and the
best of ``--repeats`` kept, in ms per new token (decoding ``--new-tokens`` after a short prompt, less the
time of decoding one, so the prefill drops out):

- ``generate``: plain greedy ``generate()``, as a user calls it;
- ``loop``: the same steps as a bare Python loop over ``model(token, cache=...)`` and ``argmax``;
- ``products``: the step's weight products alone (q/k/v, attention output, MLP in and out per block, the
  head) through ``project`` on one row, in the layout ``generate()`` gives the weights;
- ``sums``: the same weights, in the same order, each read once by a plain ``sum()``: how fast these 49
  separate tensors stream, against the one large tensor the floor's bandwidth is read from;
- ``generate_without_products`` and ``loop_without_products``: the two again with every one-row product
  replaced by a zero tensor of its shape (nothing else changed), i.e. what costs time besides the weights;
- ``floor``: the bytes of weights read per token ÷ the read bandwidth measured beside them.

From these, ``other ops`` = ``loop_without_products`` and ``generate's loop`` = ``generate_without_products``
- ``loop_without_products``. The result goes to ``benchmarks/results/decode-budget-<UTC time>.json`` and
``decode-budget-latest.md``::

    .venv/bin/python benchmarks/bench_decode_budget.py                 # gpt2 shape, 1 and all threads
    .venv/bin/python benchmarks/bench_decode_budget.py --preset tiny --new-tokens 4 --repeats 1  # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_speed import (
    RESULTS,
    bench_bandwidth,
    decode_weight_bytes,
    for_greedy_benchmark,
    load,
    load_average,
    measured_on,
    random_ids,
    result_header,
    write_folders,
    write_result,
)

from gpt2scratch import modeling_gpt2scratch as modeling

PROMPT_LEN = 8
PARTS = ("generate", "loop", "products", "sums", "generate_without_products", "loop_without_products")


@contextlib.contextmanager
def products_stubbed():
    """Every one-row ``project`` returns zeros of its output's shape; products over more rows (the prompt)
    run as they are."""
    real = modeling.project

    def zeros(linear, x, head=False):
        if x.shape[:-1].numel() > 1:
            return real(linear, x, head)
        return x.new_zeros(*x.shape[:-1], linear.out_features)

    modeling.project = zeros
    try:
        yield
    finally:
        modeling.project = real


def per_token_ms(run, new_tokens: int) -> float:
    """ms per token of ``run(n)`` (decoding n tokens) past the first."""
    start = time.perf_counter()
    run(1)
    one = time.perf_counter() - start
    start = time.perf_counter()
    run(new_tokens)
    return max(time.perf_counter() - start - one, 0.0) / (new_tokens - 1) * 1e3


def generate_run(model, ids):
    def run(n: int):
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)

    return run


def loop_run(model, ids):
    @torch.no_grad()
    def run(n: int):
        out = model(ids, use_cache=True, logits_to_keep=1)
        for _ in range(n - 1):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(token, cache=out.cache, use_cache=True)

    return run


def step_products(model) -> list[tuple]:
    """(layer, one-row input, head) of a decode step's weight products, in order, in the layout one-row
    ``generate()`` holds the weights."""
    model.layout_for_decoding(rows_per_step=1)
    x = torch.zeros(1, 1, model.config.n_embd)
    hidden = torch.zeros(1, 1, model.transformer.h[0].mlp.c_fc.out_features)
    products = []
    for block in model.transformer.h:
        products += [
            (block.attn.c_attn, x),
            (block.attn.c_proj, x),
            (block.mlp.c_fc, x),
            (block.mlp.c_proj, hidden),
        ]
    return [(layer, inputs, False) for layer, inputs in products] + [(model.lm_head, x, True)]


def products_run(model):
    """The step's one-row products."""
    products = step_products(model)

    @torch.no_grad()
    def run(n: int):
        for _ in range(n - 1):
            for layer, x, head in products:
                modeling.project(layer, x, head=head)

    return run


def sums_run(model):
    """The step's weights, each summed whole, in the products' order."""
    weights = [layer.weight for layer, _, _ in step_products(model)]

    @torch.no_grad()
    def run(n: int):
        for _ in range(n - 1):
            for weight in weights:
                weight.sum()

    return run


def measure(model, args, threads: int) -> dict:
    torch.set_num_threads(threads)
    ids = random_ids(model.config.vocab_size, 1, PROMPT_LEN)
    runs = {
        "generate": generate_run(model, ids),
        "loop": loop_run(model, ids),
        "products": products_run(model),
        "sums": sums_run(model),
        "generate_without_products": generate_run(model, ids),
        "loop_without_products": loop_run(model, ids),
    }
    best = dict.fromkeys(PARTS, float("inf"))
    load_before = load_average()
    bandwidth = max(bench_bandwidth() for _ in range(2))
    for _ in range(args.repeats):
        for name, run in runs.items():
            stub = products_stubbed() if name.endswith("without_products") else contextlib.nullcontext()
            with stub:
                best[name] = min(best[name], per_token_ms(run, args.new_tokens))
        bandwidth = max(bandwidth, bench_bandwidth())
    floor_ms = decode_weight_bytes(model) / (bandwidth * 1e9) * 1e3
    return {
        "threads": threads,
        "ms_per_token": best,
        "read_gb_per_s": bandwidth,
        "floor_ms": floor_ms,
        "load_average": [load_before, load_average()],
    }


def table(result: dict) -> str:
    lines = [
        "# Batch-1 decode: where a step's time goes",
        "",
        f"{measured_on(result)}, preset {result['preset']}, fp32, {result['new_tokens']} new tokens, best of {result['repeats']} in turn. "
        "`benchmarks/bench_decode_budget.py`.",
        "",
        "| threads | generate(), ms/token | weight products | other ops of the model | generate()'s own loop "
        "| floor (read GB/s) | generate ÷ floor | products ÷ floor | the weights summed | products ÷ sums |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        ms, floor = run["ms_per_token"], run["floor_ms"]
        own_loop = ms["generate_without_products"] - ms["loop_without_products"]
        lines.append(
            f"| {run['threads']} | {ms['generate']:.2f} | {ms['products']:.2f} | {ms['loop_without_products']:.2f} "
            f"| {own_loop:.2f} | {floor:.2f} ({run['read_gb_per_s']:.1f}) | {ms['generate'] / floor:.2f}× "
            f"| {ms['products'] / floor:.2f}× | {ms['sums']:.2f} | {ms['products'] / ms['sums']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2", help="model size (a GPT2ScratchConfig preset)")
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each part, in turn (best is kept)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--label", default="", help="suffix of the result file name")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    args = p.parse_args(argv)
    if args.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (the first token's time is subtracted)")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    result = {**result_header(args), "preset": args.preset, "repeats": args.repeats}
    result |= {"new_tokens": args.new_tokens, "prompt_len": PROMPT_LEN, "runs": []}
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        ours, _ = write_folders(args.preset, Path(tmp))
        model = for_greedy_benchmark(load("ours", ours))
        try:
            result["runs"] = [measure(model, args, threads) for threads in args.threads]
        finally:
            torch.set_num_threads(threads_before)
    return write_result(result, args.out, "decode-budget", table(result))


if __name__ == "__main__":
    main()
