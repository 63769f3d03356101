"""What ``fast.quantized_for_cpu`` (int8 / fp16 weights for CPU inference) costs in quality and buys in speed.

Quality, on a trained model (``--model``: a folder this package trained, e.g. with
``scripts/finetune.py --task lm``) and the last blocks of each ``--text`` (held out when it is the
training text: the LM task validates on its last 10%), for the fp32 model and each copy:
perplexity over non-overlapping ``n_positions`` blocks, the mean KL divergence of each copy's next-token
distribution from the fp32 one, how often its top token is the fp32 top token, and how many of 64 greedy
tokens from each of 8 prompts match the fp32 model's before the first difference. The same numeric
comparison on the 124M shape with random weights shows the rounding error at GPT-2's width (random
weights have no quality to lose).

Speed, 124M shape, random weights, at each thread count: prefill of 4 x 256 tokens and greedy
``generate()`` of ``--new-tokens`` tokens at batch 1 and 8, best of ``--repeats`` interleaved runs;
batch-1 time over each variant's own floor (its weight bytes read per token / a read bandwidth measured
here).

Usage::

    .venv/bin/python benchmarks/bench_quantized.py --model runs/shakespeare \\
        --text ../shared/data/corpora/tinyshakespeare.txt ../shared/data/corpora/the-verdict.txt
    .venv/bin/python benchmarks/bench_quantized.py --preset tiny --repeats 1 --new-tokens 4 --no-quality

Writes ``benchmarks/results/quantized-<UTC time>.json`` and ``benchmarks/results/quantized-latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_speed import (
    PROMPT_LEN,
    RESULTS,
    bench_bandwidth,
    decode_fn,
    decode_weight_bytes,
    for_greedy_benchmark,
    interleaved,
    load_average,
    machine_label,
    prefill_fn,
    random_ids,
    result_header,
    write_result,
)

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, fast

VARIANTS = ("fp32", *fast.QUANTIZED_WEIGHTS)


def variants(model: GPT2ScratchForCausalLM) -> dict[str, torch.nn.Module]:
    return {"fp32": model} | {w: fast.quantized_for_cpu(model, w) for w in fast.QUANTIZED_WEIGHTS}


# ------------------------------------------------------------------------------------------ quality
def text_blocks(model_dir: Path, text: Path, length: int, max_blocks: int) -> torch.Tensor:
    """The last ``max_blocks`` whole blocks of ``length`` tokens of ``text`` (``scripts/finetune.py --task lm``
    holds out the last 10% of its text, so the end of a training text is its validation part)."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text.read_text(encoding="utf-8"))["input_ids"]
    blocks = min(len(ids) // length, max_blocks)
    if blocks == 0:
        raise ValueError(f"{text} has {len(ids)} tokens, fewer than one block of {length}")
    return torch.tensor(ids[len(ids) - blocks * length :]).view(blocks, length)


@torch.no_grad()
def quality(
    models: dict[str, torch.nn.Module], blocks: torch.Tensor, prompts: int = 8, greedy: int = 64
) -> dict:
    """Perplexity of each variant; KL from fp32, top-1 agreement and greedy agreement of each copy."""
    logits = {name: torch.cat([m(b[None]).logits[0, :-1] for b in blocks]) for name, m in models.items()}
    targets = blocks[:, 1:].reshape(-1)
    reference = F.log_softmax(logits["fp32"], -1)
    starts = [blocks[i % len(blocks), :PROMPT_LEN][None] for i in range(prompts)]
    greedy_ref = [_greedy(models["fp32"], s, greedy) for s in starts]
    out = {}
    for name, lg in logits.items():
        log_probs = F.log_softmax(lg, -1)
        entry = {
            "perplexity": round(F.nll_loss(log_probs, targets).exp().item(), 3),
            "tokens": targets.numel(),
        }
        if name != "fp32":
            entry["kl_from_fp32"] = F.kl_div(
                log_probs, reference, log_target=True, reduction="batchmean"
            ).item()
            entry["top1_agreement"] = (lg.argmax(-1) == logits["fp32"].argmax(-1)).float().mean().item()
            entry["max_abs_logit_diff"] = (lg - logits["fp32"]).abs().max().item()
            matched = [
                _common_prefix(_greedy(models[name], s, greedy), r)
                for s, r in zip(starts, greedy_ref, strict=True)
            ]
            entry["greedy_tokens_matching_fp32"] = matched
        out[name] = entry
    return out


def _greedy(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    out = model.generate(
        prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, prompt.shape[1] :]


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    differ = (a != b).nonzero()
    return int(differ[0]) if len(differ) else len(a)


def trained_quality(args) -> list[dict]:
    """One quality section for each of ``args.text`` on the trained model ``args.model``."""
    trained = GPT2ScratchForCausalLM.from_pretrained(args.model).eval()
    copies = variants(trained)
    size = f"{sum(p.numel() for p in trained.parameters()) / 1e6:.1f}M parameters, n_embd {trained.config.n_embd}"
    sections = []
    for text in args.text:
        blocks = text_blocks(args.model, text, trained.config.n_positions, args.max_blocks)
        about = f"Trained model {args.model.name} ({size}), {blocks.numel()} tokens of {text.name}"
        sections.append({"about": about, "variants": quality(copies, blocks)})
    return sections


# ------------------------------------------------------------------------------------------ speed
def speed(models: dict[str, torch.nn.Module], args, threads: int) -> dict:
    torch.set_num_threads(threads)
    vocab = models["fp32"].config.vocab_size
    res: dict = {
        "threads": threads,
        "load_avg_start": load_average(),
        "bandwidth_gb_s": round(bench_bandwidth(), 2),
    }
    prefill_ids = random_ids(vocab, 4, min(256, models["fp32"].config.n_positions))
    times = interleaved({n: prefill_fn(m, prefill_ids) for n, m in models.items()}, args.repeats)
    res["prefill_4x256"] = {n: prefill_ids.numel() / t for n, t in times.items()}
    for batch in (1, 8):
        ids = random_ids(vocab, batch, PROMPT_LEN, seed=batch)
        decoders = {n: decode_fn(m.generate, ids, args.new_tokens) for n, m in models.items()}
        times = interleaved(decoders, args.repeats)
        res[f"decode_b{batch}"] = {n: batch * args.new_tokens / t for n, t in times.items()}
    res["load_avg_end"] = load_average()
    print(json.dumps(res), flush=True)
    return res


# ------------------------------------------------------------------------------------------ report
def markdown(result: dict) -> str:
    lines = [
        f"Measured {result['date']} on {machine_label(result['machine'])}, "
        f"torch {result['versions']['torch']}, gpt2scratch {result['versions']['git_commit']}; quantized engine "
        f"{result['engine']}.",
        "",
    ]
    for section in result.get("quality", []):
        lines += [
            f"{section['about']}:",
            "",
            "| weights | perplexity | KL from fp32 (nats/token) | top-1 = fp32 | max abs logit diff | greedy tokens = fp32 (of 64, per prompt) |",
            "|---|---|---|---|---|---|",
        ]
        for name, e in section["variants"].items():
            lines.append(
                f"| {name} | {e['perplexity']:.3f} | {e.get('kl_from_fp32', 0):.2e} | "
                f"{100 * e.get('top1_agreement', 1):.2f}% | {e.get('max_abs_logit_diff', 0):.2e} | "
                f"{' '.join(map(str, e.get('greedy_tokens_matching_fp32', []))) or '–'} |"
            )
        lines.append("")
    bandwidth = max(s["bandwidth_gb_s"] for s in result["speed"])
    floors = {n: bandwidth * 1e9 / b for n, b in result["weight_bytes_per_token"].items()}
    lines += [
        f"Speed, preset {result['preset']} (random weights), best of {result['repeats']} interleaved runs, "
        f"{result['new_tokens']} new tokens; each variant's floor: its weight bytes per token at the best read "
        f"bandwidth measured ({bandwidth} GB/s):",
        "",
        "| threads | measurement | fp32 | fp16 | int8 | int8 ÷ fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["speed"]:
        for key, label in (
            ("prefill_4x256", "prefill 4×256, tokens/s"),
            ("decode_b1", "greedy generate() batch 1, tokens/s"),
            ("decode_b8", "greedy generate() batch 8, tokens/s"),
        ):
            f = s[key]
            lines.append(
                f"| {s['threads']} | {label} | {f['fp32']:.1f} | {f['fp16']:.1f} | {f['int8']:.1f} | "
                f"{f['int8'] / f['fp32']:.2f}× |"
            )
        lines.append(
            f"| {s['threads']} | batch-1 time ÷ own floor ({s['bandwidth_gb_s']} GB/s at {s['threads']} thr) | "
            + " | ".join(f"{floors[n] / s['decode_b1'][n]:.2f}×" for n in VARIANTS)
            + " | |"
        )
    mb = result["weight_bytes_per_token"]
    lines += [
        "",
        "Weight bytes read per token: " + ", ".join(f"{n} {mb[n] / 1e6:.0f} MB" for n in VARIANTS) + ".",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="a trained model folder (quality section)")
    p.add_argument("--text", type=Path, nargs="+", help="text files scored in the quality section")
    p.add_argument("--max-blocks", type=int, default=24, help="blocks of n_positions tokens scored")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--preset", default="gpt2", help="model shape of the speed section")
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--label", default="")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not args.no_quality and not (args.model and args.text):
        p.error("--model and --text are needed for the quality section (or pass --no-quality)")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    result: dict = {
        **result_header(args),
        "engine": torch.backends.quantized.engine,
        "preset": args.preset,
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
    }
    torch.manual_seed(0)
    random_model = for_greedy_benchmark(GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset(args.preset)))
    models = variants(random_model)
    if not args.no_quality:
        result["quality"] = trained_quality(args)
        ids = random_ids(random_model.config.vocab_size, 4, min(256, random_model.config.n_positions), seed=7)
        result["quality"].append(
            {
                "about": f"Random weights, preset {args.preset}, {ids.numel()} random tokens (rounding error only)",
                "variants": quality(models, ids),
            }
        )
    result["weight_bytes_per_token"] = {n: decode_weight_bytes(m) for n, m in models.items()}
    result["speed"] = [speed(models, args, t) for t in args.threads]
    return write_result(result, args.out, "quantized", markdown(result))


if __name__ == "__main__":
    main()
