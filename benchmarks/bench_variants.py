"""The architecture variants after the same short training run on tinyshakespeare.

For each variant: ``gpt2scratch init`` with the variant's ``--set`` fields (same seed, same size otherwise),
then ``scripts/finetune.py --task lm`` with identical options. Recorded per variant: parameters, training
tokens/s (mean over logged steps), KV-cache bytes per token (fp32, all layers), validation loss and perplexity.
Writes ``results/variants-<date>.{json,md}``.

    .venv/bin/python benchmarks/bench_variants.py                 # a few minutes per variant on 2 cores
    .venv/bin/python benchmarks/bench_variants.py --steps 20 --only gpt2 rotary   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "corpora" / "tinyshakespeare.txt"
VOCAB_SIZE = 4096
SIZE = ["n_embd=128", "n_layer=4", "n_head=8", "n_positions=256"]
VARIANTS = {
    "gpt2": [],
    "rotary": ["position_embedding_type=rotary"],
    "gqa-2kv": ["n_kv_head=2"],
    "mqa": ["n_kv_head=1"],
    "window-32": ["sliding_window=32"],
    "rotary+gqa+window": ["position_embedding_type=rotary", "n_kv_head=2", "sliding_window=32"],
}


def run(command: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")


def bench_variant(name: str, fields: list[str], args, work: Path) -> dict:
    model, out, vocab = work / f"{name}-init", work / name, work / "bpe"
    init = [sys.executable, "-m", "gpt2scratch.cli", "init", "tiny", str(model), "--seed", "0"]
    run([*init, "--tokenizer-dir", str(vocab), "--set", *SIZE, *fields])
    run([
        sys.executable, "scripts/finetune.py", "--task", "lm", "--model", str(model), "--train-file", str(CORPUS),
        "--output-dir", str(out), "--max-steps", str(args.steps), "--batch-size", "8", "--max-length", "128",
        "--lr", "1e-3", "--warmup-steps", str(args.steps // 10), "--dropout", "0.0", "--eval-every", str(args.steps),
        "--eval-max-batches", "20", "--seed", "0", "--max-new-tokens", "16", "--tokenizer-dir", str(vocab),
    ])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    from gpt2scratch import GPT2ScratchConfig

    cfg = GPT2ScratchConfig(**{k: v for k, v in config.items() if k in GPT2ScratchConfig().to_dict()})
    return {
        "variant": name,
        "set": fields,
        "parameters": metrics["parameters"],
        "tokens_per_s": metrics["tokens_per_s"],
        "kv_cache_bytes_per_token": cfg.kv_cache_bytes_per_token,
        "val_loss": metrics["validation"]["loss"],
        "val_perplexity": metrics["validation"]["perplexity"],
    }


def render(result: dict) -> str:
    lines = [
        f"# Architecture variants after {result['steps']} steps on tinyshakespeare ({result['date']})",
        "",
        f"Model: {' '.join(SIZE)}, a {VOCAB_SIZE}-token BPE trained on the corpus; batch 8 × 128 tokens, lr 1e-3, no dropout, seed 0; "
        f"{result['machine']}, torch {result['torch']}, {result['threads']} threads.",
        "",
        "| variant | parameters | train tokens/s | KV cache bytes/token (fp32) | val loss | val perplexity |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["variants"]:
        lines.append(
            f"| {r['variant']} | {r['parameters']:,} | {r['tokens_per_s']:,.0f} | {r['kv_cache_bytes_per_token']:,} "
            f"| {r['val_loss']:.3f} | {r['val_perplexity']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--only", nargs="+", choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    if not CORPUS.is_file():
        sys.exit(f"{CORPUS} not found: this benchmark trains on the shared tinyshakespeare corpus.")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        # a 4096-token BPE trained on the corpus: with GPT-2's 50257 the output layer would dominate every step
        run([sys.executable, "-m", "gpt2scratch.cli", "train-tokenizer", "--vocab-size", str(VOCAB_SIZE),
             str(CORPUS), str(Path(work) / "bpe")])  # fmt: skip
        for name in args.only or VARIANTS:
            rows.append(bench_variant(name, VARIANTS[name], args, Path(work)))
            print(json.dumps(rows[-1]), flush=True)
    date = dt.date.today().isoformat()
    result = {
        "date": date,
        "steps": args.steps,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "variants": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"variants-{date}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
