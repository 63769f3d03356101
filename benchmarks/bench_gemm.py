"""The three products of a training step's linear layer on the CPU, MKL against oneDNN, in GFLOPS.

For each projection of the model (q/k/v, attention output, MLP in and out, the LM head) and each row count
(batch × sequence), times the products autograd runs for ``y = x Wᵀ + b``: the forward, ``grad_x = g W``
and ``grad_W = gᵀ x``, once as ``F.linear`` and its backward compute them (MKL's GEMM in the x86 wheels)
and once through oneDNN (``onednn_linear``, the transposed operands passed as views, as ``OneDNNLinear``'s
backward does), at each thread count, best of ``--repeats`` in turn. This decides ``ONEDNN_EVERY_PRODUCT``
in the model file: where oneDNN wins all three, every product of training and prefill goes through it.
Then, per ``--train-shape``, whole training steps (forward, backward, AdamW) of one model (plain
``from_pretrained``) with that switch on and off, and of transformers' GPT-2 on the same weights,
interleaved, best of ``--train-repeats``; with ``--train-methods lora`` also with PEFT LoRA adapters on q/k/v,
the attention output and the MLP (rank 8) of all three, the base weights frozen. The result goes to ``benchmarks/results/gemm-<UTC time>.json``
and ``gemm-latest.md``::

    .venv/bin/python benchmarks/bench_gemm.py                      # gpt2 shapes, 512 and 1024 rows, 4×128 steps
    .venv/bin/python benchmarks/bench_gemm.py --preset tiny --rows 16 --repeats 1 --train-repeats 1  # smoke run
    .venv/bin/python benchmarks/bench_gemm.py --rows --train-methods full lora    # training steps only
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_projections import with_setting
from bench_speed import (
    RESULTS,
    interleaved,
    load,
    measured_on,
    random_ids,
    result_header,
    train_step_fn,
    write_folders,
    write_result,
)

from gpt2scratch import GPT2ScratchConfig
from gpt2scratch import modeling_gpt2scratch as modeling

PRODUCTS = ("forward", "grad_x", "grad_w")


def shapes(preset: str) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection of one block and of the LM head."""
    config = GPT2ScratchConfig.from_preset(preset)
    c = config.n_embd
    return {
        "attn.c_attn": (c, 3 * c),
        "attn.c_proj": (c, c),
        "mlp.c_fc": (c, 4 * c),
        "mlp.c_proj": (4 * c, c),
        "lm_head": (c, config.vocab_size),
    }


def products(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor) -> dict:
    """name -> (MKL's way, oneDNN's way) of each product, and the largest difference between the two."""
    mkl = {
        "forward": lambda: F.linear(x, weight, bias),
        "grad_x": lambda: grad @ weight,
        "grad_w": lambda: grad.t() @ x,
    }
    onednn = {
        "forward": lambda: modeling.onednn_linear(x, weight, bias),
        "grad_x": lambda: modeling.onednn_linear(grad, weight.t()),
        "grad_w": lambda: modeling.onednn_linear(grad.t(), x.t()),
    }
    return {name: (mkl[name], onednn[name]) for name in PRODUCTS}


def best_seconds(fns: list, repeats: int) -> list[float]:
    """Best wall time of each function, run in turn (one untimed run each first)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(name: str, fan_in: int, fan_out: int, rows: int, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x, grad = torch.randn(rows, fan_in, generator=gen), torch.randn(rows, fan_out, generator=gen)
    weight, bias = torch.randn(fan_out, fan_in, generator=gen) * 0.02, torch.zeros(fan_out)
    gflop = 2 * rows * fan_in * fan_out / 1e9
    entry = {"projection": name, "in": fan_in, "out": fan_out, "rows": rows, "threads": threads}
    for product, (mkl, onednn) in products(x, weight, bias, grad).items():
        diff = (mkl() - onednn()).abs().max().item()
        mkl_s, onednn_s = best_seconds([mkl, onednn], repeats)
        entry[product] = {
            "mkl_gflops": gflop / mkl_s,
            "onednn_gflops": gflop / onednn_s,
            "max_abs_diff": diff,
        }
    return entry


def with_lora(model: torch.nn.Module) -> torch.nn.Module:
    """PEFT LoRA adapters with ``finetune --method lora``'s defaults (``TrainArgs``: rank 8, alpha 16, dropout
    0.05 on q/k/v, the attention output and the MLP); the base weights frozen. transformers' GPT-2 stores
    them as ``Conv1D`` (``fan_in_fan_out``)."""
    from peft import LoraConfig, get_peft_model

    from gpt2scratch.training.args import TrainArgs

    defaults = TrainArgs()
    conv1d = type(model).__module__.startswith("transformers.")
    config = LoraConfig(
        r=defaults.lora_r,
        lora_alpha=defaults.lora_alpha,
        lora_dropout=defaults.lora_dropout,
        target_modules=defaults.target_modules,
        fan_in_fan_out=conv1d,
    )
    return get_peft_model(model, config)


def training_steps(
    folders: tuple[Path, Path], batch: int, seq: int, threads: int, repeats: int, method: str = "full"
) -> dict:
    """Tokens/s of a training step: ours with ``ONEDNN_EVERY_PRODUCT`` on and off, and transformers';
    ``method`` "lora": each with LoRA adapters (``with_lora``)."""
    torch.set_num_threads(threads)
    ours_dir, hf_dir = folders
    models = {"on": load("ours", ours_dir), "off": load("ours", ours_dir), "transformers": load("hf", hf_dir)}
    if method == "lora":
        models = {name: with_lora(model) for name, model in models.items()}
    ids = random_ids(models["on"].config.vocab_size, batch, seq)
    steps = {}
    for name, model in models.items():
        trained = [p for p in model.parameters() if p.requires_grad]
        steps[name] = train_step_fn(model, ids, torch.optim.AdamW(trained, lr=1e-4))
    for name, on in (("on", True), ("off", False)):
        steps[name] = with_setting(steps[name], "ONEDNN_EVERY_PRODUCT", on)
    times = interleaved(steps, repeats)
    tokens = {f"{name}_tokens_per_s": batch * seq / t for name, t in times.items()}
    return {"method": method, "batch": batch, "seq": seq, "threads": threads, **tokens}


def table(result: dict) -> str:
    lines = [
        "# Training's products: MKL against oneDNN",
        "",
        f"{measured_on(result)}, torch CPU capability {result['cpu_capability']}, preset {result['preset']}, "
        f"fp32, GFLOPS (2·rows·in·out ÷ time), best of {result['repeats']} in turn; ÷ is oneDNN ÷ MKL. "
        "`benchmarks/bench_gemm.py`.",
        "",
    ]
    if result["runs"]:
        lines += [
            "| projection | rows | threads | forward MKL | oneDNN | ÷ | grad_x MKL | oneDNN | ÷ | grad_W MKL | oneDNN | ÷ |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for e in result["runs"]:
        cells = []
        for product in PRODUCTS:
            mkl, onednn = e[product]["mkl_gflops"], e[product]["onednn_gflops"]
            cells.append(f"{mkl:.0f} | {onednn:.0f} | {onednn / mkl:.2f}×")
        lines.append(f"| {e['projection']} | {e['rows']} | {e['threads']} | " + " | ".join(cells) + " |")
    if result["training"]:
        lines += [
            "",
            f"Training steps (forward, backward, AdamW; plain `from_pretrained`), best of {result['train_repeats']} "
            "interleaved, tokens/s:",
            "",
            "| training | shape | threads | ours, every product on oneDNN | ours, switch off | ÷ | transformers | on ÷ transformers | off ÷ transformers |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in result["training"]:
            on, off, hf = (e[f"{n}_tokens_per_s"] for n in ("on", "off", "transformers"))
            method = "LoRA (PEFT, rank 8)" if e.get("method") == "lora" else "full"
            lines.append(
                f"| {method} | {e['batch']}×{e['seq']} | {e['threads']} | {on:.1f} | {off:.1f} | {on / off:.2f}× "
                f"| {hf:.1f} | {on / hf:.2f}× | {off / hf:.2f}× |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2", help="model size (a GPT2ScratchConfig preset)")
    p.add_argument(
        "--rows",
        type=int,
        nargs="*",
        default=[512, 1024],
        help="batch × sequence (4×128, 4×256); none: no products",
    )
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    p.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each product, in turn (best is kept)"
    )
    p.add_argument(
        "--train-shape", type=int, nargs=2, action="append", metavar=("BATCH", "SEQ"), help="default: 4 128"
    )
    p.add_argument("--train-repeats", type=int, default=3, help="timed steps of each model (0: no steps)")
    p.add_argument(
        "--train-methods",
        nargs="+",
        default=["full"],
        choices=["full", "lora"],
        help="full training and/or LoRA",
    )
    p.add_argument("--label", default="", help="suffix of the result file name")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    args = p.parse_args(argv)
    args.train_shape = args.train_shape or [(4, 128)]
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    if not modeling.ONEDNN_LINEAR:
        raise SystemExit("this torch build has no working oneDNN inner product: nothing to compare")
    result = {**result_header(args), "preset": args.preset, "repeats": args.repeats}
    result |= {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "runs": [], "training": []}
    result["train_repeats"] = args.train_repeats
    result["onednn_every_product"] = modeling.ONEDNN_EVERY_PRODUCT
    threads_before = torch.get_num_threads()
    try:
        for threads in args.threads:
            for rows in args.rows:
                for name, (fan_in, fan_out) in shapes(args.preset).items():
                    result["runs"].append(measure(name, fan_in, fan_out, rows, threads, args.repeats))
        if args.train_repeats > 0:
            with tempfile.TemporaryDirectory(prefix="bench-gemm-") as tmp:
                folders = write_folders(args.preset, Path(tmp))
                for threads in args.threads:
                    for batch, seq in args.train_shape:
                        for method in args.train_methods:
                            steps = training_steps(folders, batch, seq, threads, args.train_repeats, method)
                            result["training"].append(steps)
    finally:
        torch.set_num_threads(threads_before)
    return write_result(result, args.out, "gemm", table(result))


if __name__ == "__main__":
    main()
