"""Speed of gpt2scratch against transformers' own ``GPT2LMHeadModel``, side by side in one process.

Both models get the same random weights (124M shape by default), are loaded with plain
``from_pretrained`` from folders written here, and are timed in turn (ours, theirs, theirs, ours, ...)
so that load from other processes on a shared machine hits both alike; each figure is the best (least
time) of several runs. Sections, at each requested thread count:

- training step (forward + backward + AdamW) tokens/s at batch x 128 and batch x 256, fp32 (with
  ``--train-compiled`` also the opt-in path compiled by ``torch.compile``);
- prefill tokens/s (a no-grad forward that fills the KV cache and keeps the last logits, as
  ``generate`` does);
- greedy decode tokens/s for N new tokens at batch 1 and batch 8 through plain ``generate()`` for both
  (the headline), and through this package's opt-in paths (``gpt2scratch.fast``);
- peak RSS of a training run, each model in its own subprocess (a process's peak RSS only grows);
- memory read bandwidth, giving the batch-1 decode floor (weight bytes read per token / bandwidth).

GPU sections run where CUDA is available (``--gpu-only`` skips the CPU ones; ``benchmarks/run_on_gpu.sh``
runs them and the GPU tests in one call): parity on the GPU, 16 x 1024 bf16-autocast training with MFU
(optionally transformers compiled too, and a profile), greedy decode at batch 1 and 8 through ``generate()``
and ``fast.greedy_loop`` (optionally on bf16 weights, autotuned, or with eager attention). Each section is
saved as soon as it ends. ``--gpu-device cpu`` runs their code on the CPU (a dry run, which the tests do).

Usage::

    .venv/bin/python benchmarks/bench_speed.py                 # full run, 1 and all threads
    .venv/bin/python benchmarks/bench_speed.py --preset tiny --repeats 1 --new-tokens 8   # smoke run

Each run writes ``benchmarks/results/speed-<UTC time>.json`` and ``benchmarks/results/speed-latest.md``
(``speed-gpu-latest.md`` for a GPU-only run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
PROMPT_LEN = 32
TARGETS = {  # ours / transformers, from issue 5
    "train": 1.2,
    "prefill": 1.1,
    "decode_b8": 1.3,
    "decode_b1": 1.0,
}


# ----------------------------------------------------------------------------------------- the machine
def machine_info() -> dict:
    """CPU model, core count, memory and vector extensions, so results from different machines differ."""
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
        info["cpu_model"] = _cpuinfo_field(text, "model name")
        family, number = (_cpuinfo_field(text, key) for key in ("cpu family", "model"))
        info["cpu_id"] = f"family {family} model {number}"
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["mem_gb"] = round(kb / 2**20, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    import transformers

    import gpt2scratch

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpt2scratch": gpt2scratch.__version__,
        "git_commit": os.environ.get("GPT2SCRATCH_COMMIT") or git_commit(),
    }


def git_commit() -> str:
    """This checkout's commit (+dirty-src if src/ has changes); '?' where there is no git or no .git (a copy
    of the tree on another machine: pass GPT2SCRATCH_COMMIT there)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return "?"
    if commit.returncode:
        return "?"
    return commit.stdout.strip() + ("+dirty-src" if dirty.stdout.strip() else "")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------ the models
def write_folders(preset: str, root: Path) -> tuple[Path, Path]:
    """Save one random model of this package and the same weights as a transformers GPT-2 folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM
    from gpt2scratch.conversion.hf_gpt2 import CONFIG_FIELDS, state_dict_to_hf

    torch.manual_seed(0)
    config = GPT2ScratchConfig.from_preset(preset)
    ours = GPT2ScratchForCausalLM(config)
    hf = GPT2LMHeadModel(GPT2Config(**{f: getattr(config, f) for f in CONFIG_FIELDS}))
    missing, unexpected = hf.load_state_dict(state_dict_to_hf(ours.state_dict()), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"weight mapping to GPT2LMHeadModel failed: missing {missing}, unexpected {unexpected}"
        )
    ours_dir, hf_dir = root / "gpt2scratch", root / "transformers"
    ours.save_pretrained(ours_dir)
    hf.save_pretrained(hf_dir)
    return ours_dir, hf_dir


def load(kind: str, folder: Path, **kwargs) -> torch.nn.Module:
    """Plain ``from_pretrained``, as a user loads each model (ours through the Auto classes)."""
    from transformers import AutoModelForCausalLM

    import gpt2scratch  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    expected = "GPT2Scratch" if kind == "ours" else "GPT2LMHead"
    if not type(model).__name__.startswith(expected):
        raise RuntimeError(f"{folder} loaded as {type(model).__name__}, expected {expected}*")
    return model


def check_same_weights(ours, hf) -> float:
    """Largest |logit difference| on a short input; the comparison is meaningless if this is not tiny."""
    ids = torch.randint(0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours.eval()(ids).logits - hf.eval()(ids).logits).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(
            f"the two models disagree (max |d logits| = {diff}); the benchmark would compare apples to pears"
        )
    return diff


# ------------------------------------------------------------------------------------------- timing
def interleaved(
    contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Best (least) wall time of each contender, running them in alternating order so load hits all."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in contenders}
    names = list(contenders)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            contenders[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def random_ids(vocab: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def train_step_fn(model, ids: torch.Tensor, optimizer) -> Callable[[], float]:
    """One step of forward + backward + optimizer on a fixed batch (labels = inputs, shifted inside)."""
    model.train()

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def prefill_fn(model, ids: torch.Tensor) -> Callable[[], object]:
    model.eval()

    def prefill():
        with torch.no_grad():
            return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits

    return prefill


def decode_fn(generate: Callable, ids: torch.Tensor, new_tokens: int) -> Callable[[], object]:
    """Greedy decoding of exactly ``new_tokens`` tokens (end-of-text does not stop it)."""
    mask = torch.ones_like(ids)

    def decode():
        out = generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
        if out.is_cuda:
            torch.cuda.synchronize()
        if out.shape[1] != ids.shape[1] + new_tokens:
            raise RuntimeError(f"generate stopped after {out.shape[1] - ids.shape[1]} of {new_tokens} tokens")
        return out

    return decode


def for_greedy_benchmark(model):
    """No end-of-text stop, so both models always produce the same number of tokens."""
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = model.config.eos_token_id
    return model


# ------------------------------------------------------------------------------------------ sections
def _cpuinfo_field(text: str, key: str) -> str:
    """The first value of ``key`` in /proc/cpuinfo's text ("?" where absent)."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return "?"


def machine_label(machine: dict) -> str:
    """The CPU as result tables name it: model, family/model numbers, widest vector unit and vCPUs (one
    machine name, e.g. "AMD EPYC", covers hosts of several generations)."""
    simd = machine.get("simd", [])
    vectors = "AVX-512" if "avx512f" in simd else "AVX2" if "avx2" in simd else "no AVX2"
    ident = f", {machine['cpu_id']}" if "cpu_id" in machine else ""
    return f"{machine.get('cpu_model', '?')} ({vectors}{ident}, {machine.get('cpus')} vCPUs)"


def measured_on(result: dict) -> str:
    """The opening of every result table: when, on what machine, with which versions."""
    versions = result["versions"]
    return (
        f"Measured {result['date']} on {machine_label(result['machine'])}, torch {versions['torch']}, "
        f"transformers {versions['transformers']}, gpt2scratch {versions['git_commit']}"
    )


def bench_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: the best time to sum a tensor much larger than the caches, whole or as 64
    row sums (which read faster on an AVX-512 host: 37.7 against 32.3 GB/s at 1 thread, 45.8 against 39.8
    at 2)."""
    x = torch.ones(megabytes * 2**20 // 4)
    rows = x.view(64, -1)
    best = min(_time(fn) for fn in (x.sum, lambda: rows.sum(1)) for _ in range(repeats))
    return x.numel() * 4 / best / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_weight_bytes(model) -> int:
    """Bytes of weights read to produce one token: every parameter once, except one row of ``wpe`` (and of
    ``wte`` when the head is not tied to it, as in a quantized copy), plus the weights and biases that
    quantized linear layers keep packed (int8 with a scale and zero point per row, or fp16)."""
    params = {p.data_ptr(): p for p in model.parameters()}.values()
    total = sum(p.numel() * p.element_size() for p in params)
    lookups = [model.transformer.wpe.weight]
    if getattr(model.lm_head, "weight", None) is not model.transformer.wte.weight:
        lookups.append(model.transformer.wte.weight)
    total -= sum(w.numel() * w.element_size() - w.shape[1] * w.element_size() for w in lookups)
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._packed_params._weight_bias()
            int8 = module._packed_params.dtype == torch.qint8
            total += weight.numel() * (1 if int8 else 2) + (weight.shape[0] * 8 if int8 else 0)
            total += 0 if bias is None else bias.numel() * 4
    return total


def bench_training(dirs, args, batch: int, seq: int) -> dict:
    from gpt2scratch import fast

    models = {"ours": load("ours", dirs["ours"]), "transformers": load("hf", dirs["transformers"])}
    ids = random_ids(models["ours"].config.vocab_size, batch, seq)
    steps = {
        name: train_step_fn(m, ids, torch.optim.AdamW(m.parameters(), lr=1e-4)) for name, m in models.items()
    }
    fast_model = fast.prepare_for_training(load("ours", dirs["ours"]))
    steps["ours_fast"] = train_step_fn(fast_model, ids, fast.make_optimizer(fast_model, lr=1e-4))
    if args.train_compiled:  # ours_fast plus torch.compile: whether compiling pays here (minutes to compile)
        compiled = fast.prepare_for_training(load("ours", dirs["ours"]), compile=True)
        steps["ours_compiled"] = train_step_fn(compiled, ids, fast.make_optimizer(compiled, lr=1e-4))
    times = interleaved(steps, args.train_repeats, warmup=args.train_warmup)
    return {name: batch * seq / t for name, t in times.items()}


def bench_prefill(models, args) -> dict:
    ours = models["ours"]
    ids = random_ids(ours.config.vocab_size, 4, min(256, ours.config.n_positions)).to(ours.device)
    times = interleaved({name: prefill_fn(m, ids) for name, m in models.items()}, args.repeats)
    return {name: ids.numel() / t for name, t in times.items()}


def bench_decode(models, fast_models, args, batch: int) -> dict:
    """Tokens/s of plain ``generate`` for both, and of each opt-in path of ours; errors are reported."""
    ids = random_ids(models["ours"].config.vocab_size, batch, PROMPT_LEN, seed=batch).to(
        models["ours"].device
    )
    generators = {name: m.generate for name, m in models.items()} | fast_models
    result, _, failed = time_decoding(generators, models, ids, args, warmup_tokens=2)
    result.update({name: f"failed: {why}" for name, why in failed.items()})
    return result


def time_decoding(generators: dict, required, ids, args, warmup_tokens: int) -> tuple[dict, dict, dict]:
    """Tokens/s of each ``generate``-like callable over ``args.new_tokens`` greedy tokens, after a warm-up of
    ``warmup_tokens`` whose outputs are returned too; a path that fails there is reported (name: error) and
    left out, unless it is in ``required``."""
    contenders, outputs, failed = {}, {}, {}
    for name, generate in generators.items():
        try:
            outputs[name] = decode_fn(generate, ids, warmup_tokens)()
        except Exception as err:  # noqa: BLE001  (a broken opt-in path is reported, not fatal)
            if name in required:
                raise
            failed[name] = f"{type(err).__name__}: {err}"[:300]
            continue
        contenders[name] = decode_fn(generate, ids, args.new_tokens)
    times = interleaved(contenders, args.repeats, warmup=0)
    return {name: ids.shape[0] * args.new_tokens / t for name, t in times.items()}, outputs, failed


def fast_decoders(dirs, args) -> dict[str, Callable]:
    """This package's opt-in decode paths (see ``gpt2scratch.fast``), each a ``generate``-like callable."""
    from gpt2scratch import fast

    paths = {}
    for name, build in fast.DECODE_PATHS.items():
        if name in args.skip_paths:
            continue
        try:
            paths[f"ours_{name}"] = build(for_greedy_benchmark(load("ours", dirs["ours"])))
        except Exception as err:  # noqa: BLE001
            paths[f"ours_{name}"] = _raiser(f"{type(err).__name__}: {err}")
    for weights in fast.QUANTIZED_WEIGHTS:  # other outputs than fp32: reported in a column of their own
        if f"{weights}_weights" not in args.skip_paths:
            paths[f"ours_{weights}_weights"] = fast.quantized_for_cpu(
                for_greedy_benchmark(load("ours", dirs["ours"])), weights
            ).generate
    return paths


def _raiser(message: str) -> Callable:
    def fail(*args, **kwargs):
        raise RuntimeError(message)

    return fail


def bench_memory(dirs, args, threads: int, names=("ours", "transformers", "ours_fast")) -> dict:
    """RSS (MB) of a short training run, or of a batch-1 ``generate()`` for the ``*_decode`` names, each
    model in a fresh subprocess."""
    out = {}
    for name in names:
        folder = dirs["transformers" if name.startswith("transformers") else "ours"]
        cmd = [
            sys.executable,
            __file__,
            "--child-memory",
            name,
            "--folder",
            str(folder),
            "--threads",
            str(threads),
        ]
        cmd += ["--memory-shape", str(args.memory_shape[0]), str(args.memory_shape[1])]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            out[name] = f"failed: {proc.stderr.strip().splitlines()[-1:]}"
            continue
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def memory_child(kind: str, folder: Path, batch: int, seq: int, steps: int = 1) -> None:
    """Train ``steps`` steps, or for a ``*_decode`` kind greedily decode 16 tokens at batch 1, and print the
    RSS as JSON (runs in its own process)."""
    from gpt2scratch import fast

    model = load("hf" if kind.startswith("transformers") else "ours", folder)
    loaded = peak_rss_mb()
    if kind.endswith("_decode"):
        ids = random_ids(model.config.vocab_size, 1, 8)
        model.eval().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        rss = {"rss_after_load_mb": round(loaded), "rss_after_generate_mb": round(rss_mb())}
        print(json.dumps(rss | {"peak_rss_mb": round(peak_rss_mb())}))
        return
    if kind == "ours_fast":
        model = fast.prepare_for_training(model)
        optimizer = fast.make_optimizer(model, lr=1e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = random_ids(model.config.vocab_size, batch, min(seq, model.config.n_positions))
    step = train_step_fn(model, ids, optimizer)
    for _ in range(steps):
        step()
    print(json.dumps({"rss_after_load_mb": round(loaded), "peak_rss_mb": round(peak_rss_mb())}))


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM") in MB (None where there is none)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def rss_mb() -> float:
    """This process's resident memory now (VmRSS)."""
    now = _status_mb("VmRSS")
    return float("nan") if now is None else now


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not inherit the parent's peak
    through fork + exec)."""
    peak = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak


# ---------------------------------------------------------------------------------------------- CPU run
def run_threads(dirs, args, threads: int) -> dict:
    """Every CPU section at one thread count."""
    torch.set_num_threads(threads)
    res: dict = {"threads": threads, "load_avg_start": load_average()}
    res["bandwidth_gb_s"] = round(bench_bandwidth(), 2)
    sections = args.sections
    if "train" in sections:
        for seq in (s for s in args.train_seqs if s <= args.n_positions):
            res[f"train_4x{seq}"] = bench_training(dirs, args, 4, seq)
            print(f"[{threads} thr] train 4x{seq}: {_fmt(res[f'train_4x{seq}'])}", flush=True)
    models = {"ours": for_greedy_benchmark(load("ours", dirs["ours"]))}
    models["transformers"] = for_greedy_benchmark(load("hf", dirs["transformers"]))
    res["max_abs_logit_diff"] = check_same_weights(models["ours"], models["transformers"])
    if "prefill" in sections:
        res["prefill_4x256"] = bench_prefill(models, args)
        print(f"[{threads} thr] prefill: {_fmt(res['prefill_4x256'])}", flush=True)
    if "decode" in sections:
        fast_models = fast_decoders(dirs, args)
        for batch in args.decode_batches:
            res[f"decode_b{batch}"] = bench_decode(models, fast_models, args, batch)
            print(f"[{threads} thr] decode b{batch}: {_fmt(res[f'decode_b{batch}'])}", flush=True)
        if 1 in args.decode_batches:
            res["decode_weight_bytes"] = decode_weight_bytes(models["ours"])
            res["decode_floor_tok_s"] = round(res["bandwidth_gb_s"] * 1e9 / res["decode_weight_bytes"], 2)
    if "memory" in sections and threads == args.threads[0]:  # peak memory does not depend on threads
        res["peak_rss_train"] = bench_memory(dirs, args, threads)
        res["rss_decode_b1"] = bench_memory(dirs, args, threads, ("ours_decode", "transformers_decode"))
        print(
            f"[{threads} thr] memory: {res['peak_rss_train']}, decoding: {res['rss_decode_b1']}", flush=True
        )
    res["load_avg_end"] = load_average()
    return res


def _fmt(figures: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())


# ---------------------------------------------------------------------------------------------- GPU run


GPU_TARGETS = {"train": 1.5, "train_mfu": 0.45, "decode_b1": 10.0, "decode_b1_tok_s": 3000.0}


def run_gpu(dirs, args, result: dict, checkpoint: Callable[[], object]) -> None:
    """The CUDA sections on the first device, each saved as soon as it ends (a run cut short keeps them):
    parity (fp32 logits, bf16 loss), bf16 training 16 x 1024 with MFU, greedy decode at batch 1 and 8.
    ``--gpu-device cpu`` runs the same code on the CPU (a dry run of the script, not a measurement)."""
    cuda = args.gpu_device == "cuda"
    gpu = result["gpu"] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "cuda": torch.version.cuda,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
    }
    sections = {
        "parity": gpu_parity,
        "train": gpu_training,
        "decode_b1": lambda d, a: gpu_decode(d, a, 1),
        "decode_b8": lambda d, a: gpu_decode(d, a, 8),
    }
    for name in args.gpu_sections:
        start = time.perf_counter()
        try:
            gpu[name] = sections[name](dirs, args)
        except Exception:  # noqa: BLE001  (the other sections are still worth having)
            gpu[name] = {"failed": traceback.format_exc()[-2000:]}
        gpu[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        print(f"[gpu] {name} ({gpu[f'{name}_seconds']} s): {gpu[name]}", flush=True)
        if cuda:
            torch.cuda.empty_cache()
        checkpoint()


def gpu_parity(dirs, args) -> dict:
    """Same weights on the GPU: fp32 logits (TF32 off) and the bf16-autocast loss of both models."""
    torch.backends.cuda.matmul.allow_tf32 = False
    device = args.gpu_device
    ours, hf = (
        load("ours", dirs["ours"]).to(device).eval(),
        load("hf", dirs["transformers"]).to(device).eval(),
    )
    ids = random_ids(ours.config.vocab_size, 2, min(128, ours.config.n_positions)).to(device)
    with torch.no_grad():
        fp32 = (ours(ids).logits - hf(ids).logits).abs().max().item()
        with torch.autocast(device, dtype=torch.bfloat16):
            losses = [m(input_ids=ids, labels=ids).loss.item() for m in (ours, hf)]
    return {
        "max_abs_logit_diff_fp32": fp32,
        "loss_bf16_autocast": {"ours": losses[0], "transformers": losses[1]},
    }


def gpu_training(dirs, args) -> dict:
    """Tokens/s and MFU of one bf16-autocast training step (forward, backward, fused AdamW), TF32 on; every
    model with the dropout rates of its config (GPT-2's 0.1), or all of them at ``--gpu-train-dropout``."""
    from gpt2scratch import fast

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device, backend = args.gpu_device, args.compile_backend
    batch, seq = args.gpu_train_shape
    rates = {} if args.gpu_train_dropout is None else dict.fromkeys(DROPOUT_RATES, args.gpu_train_dropout)
    steps, dropout = {}, {}
    for name, kind in (("ours", "ours"), ("transformers", "hf")):
        model = load(kind, dirs[name], **rates).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        steps[name], dropout[name] = _gpu_train_step(model, optimizer, batch, seq), dropout_rates(model)
    fast_model = fast.prepare_for_training(
        load("ours", dirs["ours"], **rates).to(device), compile=True, backend=backend
    )
    steps["ours_fast"] = _gpu_train_step(fast_model, fast.make_optimizer(fast_model, lr=1e-4), batch, seq)
    dropout["ours_fast"] = dropout_rates(fast_model)
    if args.gpu_hf_compiled:
        hf = load("hf", dirs["transformers"], **rates).to(device)
        dropout["transformers_compiled"] = dropout_rates(hf)
        hf.forward = torch.compile(hf.forward, backend=backend)
        steps["transformers_compiled"] = _gpu_train_step(
            hf, torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True), batch, seq
        )
    times = interleaved(steps, args.repeats, warmup=3)
    tok_s = {name: batch * seq / t for name, t in times.items()}
    flops_per_token = fast.training_flops_per_token(fast_model.config, seq)
    peak = fast.peak_flops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    res = {"tok_s": tok_s, "shape": [batch, seq], "flops_per_token": flops_per_token, "peak_flops": peak}
    res["dropout"] = dropout
    if peak:
        res["mfu"] = {name: tps * flops_per_token / peak for name, tps in tok_s.items()}
    if device == "cuda":
        res["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    if args.gpu_profile:
        res["profile_ours_fast"] = profile_table(steps["ours_fast"], device)
    return res


DROPOUT_RATES = ("attn_pdrop", "resid_pdrop", "embd_pdrop")  # the same names in both models' configs


def dropout_rates(model) -> dict:
    """The dropout rates a loaded model trains with (its config's)."""
    return {name: getattr(model.config, name) for name in DROPOUT_RATES}


def profile_table(fn: Callable[[], object], device: str, rows: int = 30) -> list[str]:
    """torch.profiler's table of the ops that took the most device time in one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    sort_by = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows).splitlines()


def _gpu_train_step(model, optimizer, batch, seq):
    ids = random_ids(model.config.vocab_size, batch, seq).to(model.device)
    step = train_step_fn(model, ids, optimizer)

    def synced():
        with torch.autocast(model.device.type, dtype=torch.bfloat16):
            step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    return synced


def _autotuned(generate: Callable) -> Callable:
    """``generate`` compiling (on its first call) with inductor's coordinate-descent tuning of its kernels."""

    def tuned(*args, **kwargs):
        with torch._inductor.config.patch(coordinate_descent_tuning=True):
            return generate(*args, **kwargs)

    return tuned


def gpu_decode(dirs, args, batch: int) -> dict:
    """Greedy decode tokens/s (fp32 weights, TF32 on) through plain ``generate`` for both models and this
    package's GPU paths, each warmed up on the full length (the compiled ones compile then); whether each
    produced transformers' tokens is recorded (TF32 rounding can flip a near-tie on random weights)."""
    from gpt2scratch import fast

    torch.backends.cuda.matmul.allow_tf32 = True
    device = args.gpu_device
    models = {"ours": for_greedy_benchmark(load("ours", dirs["ours"]).to(device))}
    models["transformers"] = for_greedy_benchmark(load("hf", dirs["transformers"]).to(device))
    generators = {name: m.generate for name, m in models.items()}
    for name in fast.GPU_DECODE_PATHS:
        if name not in args.skip_paths:
            generators[f"ours_{name}"] = fast.DECODE_PATHS[name](models["ours"])
    if args.gpu_decode_bf16:  # the same weights in bf16: half the bytes per token (other rounding, tokens)
        bf16 = for_greedy_benchmark(load("ours", dirs["ours"]).to(device, torch.bfloat16))
        generators["ours_greedy_loop_bf16"] = fast.greedy_loop(bf16)
        if args.gpu_decode_autotune:  # inductor's autotuned matmuls and tuned reductions for the bf16 step
            generators["ours_greedy_loop_bf16_autotune"] = _autotuned(
                fast.greedy_loop(bf16, mode="max-autotune-no-cudagraphs", backend=args.compile_backend)
            )
    if args.gpu_decode_eager_attention:  # the model loaded with matmul-softmax attention, fp32 and bf16
        for dtype, suffix in ((torch.float32, ""), (torch.bfloat16, "_bf16")):
            eager = load("ours", dirs["ours"], attn_implementation="eager").to(device, dtype)
            generators[f"ours_greedy_loop{suffix}_eager_attention"] = fast.greedy_loop(
                for_greedy_benchmark(eager), backend=args.compile_backend
            )
    ids = random_ids(models["ours"].config.vocab_size, batch, PROMPT_LEN, seed=batch).to(device)
    tok_s, tokens, failed = time_decoding(generators, models, ids, args, warmup_tokens=args.new_tokens)
    res = {"tok_s": tok_s, "failed_paths": failed}
    if args.gpu_profile:  # where the device time of 16 decode steps goes
        for name in [n for n in tok_s if n.startswith("ours_greedy_loop")]:
            res[f"profile_{name}"] = profile_table(
                lambda g=generators[name]: g(ids, max_new_tokens=16), device
            )
    res["same_tokens_as_transformers"] = {
        name: bool(torch.equal(out, tokens["transformers"])) for name, out in tokens.items()
    }
    return res


# ------------------------------------------------------------------------------------------ reporting
def ratio(figures: dict, name: str = "ours", base: str = "transformers") -> float | None:
    a, b = figures.get(name), figures.get(base)
    return round(a / b, 3) if isinstance(a, float) and isinstance(b, float) else None


def summarise(result: dict) -> dict:
    """ours / transformers for each figure and thread count, plus the decode floor check."""
    ratios = {}
    for cpu in result["cpu"]:
        t = cpu["threads"]
        for key in ("train_4x128", "train_4x256", "prefill_4x256", *_decode_keys(cpu)):
            if key in cpu:
                for name in cpu[key]:
                    if name != "transformers" and (r := ratio(cpu[key], name)) is not None:
                        ratios[f"{key}/{name}/{t}thr"] = r
        if "decode_floor_tok_s" in cpu:
            for name, tps in cpu["decode_b1"].items():
                if isinstance(tps, float):
                    ratios[f"decode_b1_time_over_floor/{name}/{t}thr"] = round(best_floor(result) / tps, 3)
        mem = cpu.get("peak_rss_train", {})
        if all(isinstance(mem.get(n), dict) for n in ("ours", "transformers")):
            ratios[f"peak_rss_train/ours/{t}thr"] = round(
                mem["ours"]["peak_rss_mb"] / mem["transformers"]["peak_rss_mb"], 3
            )
    for key in ("train", "decode_b1", "decode_b8"):
        figures = result.get("gpu", {}).get(key, {}).get("tok_s", {})
        for name in figures:
            if name != "transformers" and (r := ratio(figures, name)) is not None:
                ratios[f"gpu_{key}/{name}"] = r
    return ratios


def _decode_keys(cpu: dict) -> list[str]:
    """The decode sections of one thread count, by batch size ("decode_b1", "decode_b8", ...)."""
    keys = [key for key in cpu if key.startswith("decode_b") and key[len("decode_b") :].isdigit()]
    return sorted(keys, key=lambda key: int(key[len("decode_b") :]))


def best_floor(result: dict) -> float:
    """Batch-1 decode floor in tokens/s with the best read bandwidth measured at any thread count."""
    return max(c["decode_floor_tok_s"] for c in result["cpu"] if "decode_floor_tok_s" in c)


def markdown(result: dict) -> str:
    """The table the README shows: tokens/s of each model, the ratio and the issue's target."""
    if not result["cpu"]:  # a GPU-only run
        return "\n".join(gpu_markdown(result)) + "\n"
    lines = [
        f"{measured_on(result)}, preset {result['preset']}, fp32, best of {result['repeats']} interleaved runs "
        f"(training: {result['train_repeats']}, after {result['train_warmup']} untimed). Load average before/after each thread count: "
        + "; ".join(f"{c['threads']} thr {c['load_avg_start']} → {c['load_avg_end']}" for c in result["cpu"])
        + ".",
        "",
        "| measurement | threads | gpt2scratch | transformers | ratio | target | best opt-in path of ours "
        "| quantized copies of ours (other outputs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        ("train_4x128", "training step 4×128, tokens/s", "train"),
        ("train_4x256", "training step 4×256, tokens/s", "train"),
        ("prefill_4x256", "prefill 4×256, tokens/s", "prefill"),
    ]
    for cpu in result["cpu"]:
        decode_rows = [
            (
                key,
                f"greedy generate() batch {key[len('decode_b') :]}, {result['new_tokens']} new tokens/s",
                key,
            )
            for key in _decode_keys(cpu)
        ]
        for key, label, target in rows + decode_rows:
            if key not in cpu:
                continue
            fig = cpu[key]
            goal = f"≥ {TARGETS[target]}×" if target in TARGETS else "(no target)"
            lines.append(
                f"| {label} | {cpu['threads']} | {_num(fig.get('ours'))} | {_num(fig.get('transformers'))} | "
                f"{_num(ratio(fig), 2)}× | {goal} | {_best_fast(fig)} | {_quantized(fig)} |"
            )
        mem = cpu.get("peak_rss_train")
        if mem:
            b, t = result["memory_shape"]
            lines.append(
                f"| peak RSS of one training step {b}×{t}, MB (own process) | {cpu['threads']} | {_mb(mem.get('ours'))} | "
                f"{_mb(mem.get('transformers'))} | | ≤ 1.0× | ours_fast {_mb(mem.get('ours_fast'))} | |"
            )
        decoding = cpu.get("rss_decode_b1")
        if decoding:
            ours, theirs = (decoding.get(f"{n}_decode") for n in ("ours", "transformers"))
            lines.append(
                f"| RSS after a batch-1 generate() of 16 tokens, MB (own process) | {cpu['threads']} | "
                f"{_mb(ours, 'rss_after_generate_mb')} | {_mb(theirs, 'rss_after_generate_mb')} | | (a cost, no target) | | |"
            )
        if "decode_floor_tok_s" in cpu:
            floor = best_floor(result)
            b1 = cpu["decode_b1"]
            lines.append(
                f"| batch-1 decode time ÷ floor ({cpu['decode_weight_bytes'] / 1e6:.0f} MB of weights/token at the "
                f"best read bandwidth measured, {floor:.1f} tok/s; {cpu['bandwidth_gb_s']} GB/s at {cpu['threads']} thr) "
                f"| {cpu['threads']} | {_num(_over(floor, b1.get('ours')), 2)}× | "
                f"{_num(_over(floor, b1.get('transformers')), 2)}× | | ≤ 1.25× at best threads | | |"
            )
    if "gpu" in result:
        lines += gpu_markdown(result)
    return "\n".join(lines) + "\n"


def gpu_markdown(result: dict) -> list[str]:
    """The GPU rows: tokens/s of every contender, ratios to transformers' plain model, MFU, targets."""
    gpu, versions = result["gpu"], result["versions"]
    lines = [
        "",
        f"Measured {result['date']} on {gpu['device']} (CUDA {gpu.get('cuda')}; host "
        f"{machine_label(result['machine'])}), torch {versions['torch']}, "
        f"transformers {versions['transformers']}, gpt2scratch {versions['git_commit']}, preset {result['preset']}, "
        f"best of {result['repeats']} interleaved runs. Weights fp32 (matmuls in TF32) unless a contender's name "
        "says bf16; training in bf16 autocast.",
        "",
    ]
    parity = gpu.get("parity", {})
    if "max_abs_logit_diff_fp32" in parity:
        lines += [
            f"Same weights on the GPU: max |logit difference| {parity['max_abs_logit_diff_fp32']:.2e} (fp32, TF32 "
            f"off); bf16-autocast loss {parity['loss_bf16_autocast']['ours']:.4f} (ours) vs "
            f"{parity['loss_bf16_autocast']['transformers']:.4f} (transformers).",
            "",
        ]
    lines += [
        "| measurement | contender | tokens/s | ÷ transformers | MFU | target |",
        "|---|---|---|---|---|---|",
    ]
    train = gpu.get("train", {})
    shape = "×".join(map(str, train.get("shape", [16, 1024])))
    for name, tps in train.get("tok_s", {}).items():
        mfu = train.get("mfu", {}).get(name)
        rates = set(train.get("dropout", {}).get(name, {}).values())  # older results did not record them
        dropout = f", dropout {rates.pop():g}" if len(rates) == 1 else ""
        lines.append(
            f"| training {shape} bf16 autocast{dropout} | {name} | {tps:,.0f} | {_num(ratio(train['tok_s'], name), 2)}× | "
            f"{_num(100 * mfu if mfu else None)}% | ≥ {GPU_TARGETS['train']}×, ≥ {100 * GPU_TARGETS['train_mfu']:.0f}% |"
        )
    for b in (1, 8):
        dec = gpu.get(f"decode_b{b}", {})
        target = (
            f"≥ {GPU_TARGETS['decode_b1']:.0f}×, ≥ {GPU_TARGETS['decode_b1_tok_s']:.0f} tok/s"
            if b == 1
            else ""
        )
        for name, tps in dec.get("tok_s", {}).items():
            same = dec.get("same_tokens_as_transformers", {}).get(name)
            lines.append(
                f"| greedy decode batch {b}, {result['new_tokens']} new | {name}"
                f"{'' if same is not False else ' (other tokens)'} | {tps:,.0f} | {_num(ratio(dec['tok_s'], name), 2)}× | | "
                f"{target} |"
            )
        for name, why in dec.get("failed_paths", {}).items():
            lines.append(f"| greedy decode batch {b} | {name} | failed: {why[:120]} | | | |")
    for key in ("parity", "train", "decode_b1", "decode_b8"):
        if "failed" in gpu.get(key, {}) and isinstance(gpu[key]["failed"], str):
            lines.append(f"| {key} | section failed | {gpu[key]['failed'].splitlines()[-1][:160]} | | | |")
    return lines


def _over(floor: float, tokens_per_s) -> float | None:
    return floor / tokens_per_s if isinstance(tokens_per_s, float) else None


def _exact(name: str) -> bool:
    """Whether a contender computes what the fp32 model does (quantized copies do not)."""
    return not name.endswith("_weights")


def _best_fast(figures: dict) -> str:
    fast = {
        k: v
        for k, v in figures.items()
        if k not in ("ours", "transformers") and _exact(k) and isinstance(v, float)
    }
    if not fast:
        return ""
    name = max(fast, key=fast.get)
    base = figures.get("transformers")
    return f"{name} {fast[name]:.1f}" + (f" ({fast[name] / base:.2f}×)" if isinstance(base, float) else "")


def _quantized(figures: dict) -> str:
    base = figures.get("transformers")
    return ", ".join(
        f"{k.removeprefix('ours_').removesuffix('_weights')} {v:.1f}"
        + (f" ({v / base:.2f}×)" if isinstance(base, float) else "")
        for k, v in figures.items()
        if not _exact(k) and isinstance(v, float)
    )


def _num(x, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "–"


def _mb(entry, key: str = "peak_rss_mb") -> str:
    return str(entry[key]) if isinstance(entry, dict) else "–"


def save(result: dict, out: Path) -> Path:
    """Write the dated JSON result and the markdown table (``latest_name``) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["date"].replace(":", "").replace("-", "")
    path = out / f"speed-{stamp}{'-' + result['label'] if result['label'] else ''}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    (out / latest_name(result)).write_text(markdown(result))
    return path


def result_header(args: argparse.Namespace) -> dict:
    """What every result file starts with: the UTC time, ``args.label``, the machine and the versions."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "label": args.label,
        "machine": machine_info(),
        "versions": versions(),
    }


def write_result(result: dict, out: Path, kind: str, table: str) -> Path:
    """``out/<kind>-<UTC stamp>[-<label>].json`` and ``out/<kind>-latest.md`` (``table``), for the other
    benchmark scripts; the JSON's path is returned."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["date"].replace(":", "").replace("-", "")
    label = result.get("label")
    path = out / f"{kind}-{stamp}{'-' + label if label else ''}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{kind}-latest.md").write_text(table)
    print(table)
    print(f"wrote {path}")
    return path


def latest_name(result: dict) -> str:
    """speed-latest.md for a run with CPU sections, speed-gpu-latest.md for a GPU-only one."""
    return "speed-latest.md" if result["cpu"] else "speed-gpu-latest.md"


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2", help="model size (a GPT2ScratchConfig preset)")
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each contender (best is kept)")
    p.add_argument("--train-repeats", type=int, default=2)
    p.add_argument("--train-warmup", type=int, default=1, help="untimed training steps first")
    p.add_argument(
        "--train-seqs", type=int, nargs="+", default=[128, 256], help="training sequence lengths (batch 4)"
    )
    p.add_argument(
        "--train-compiled",
        action="store_true",
        help="also time ours_fast with torch.compile (ours_compiled) in training; each shape compiles for minutes",
    )
    p.add_argument("--memory-shape", type=int, nargs=2, default=[4, 256], metavar=("BATCH", "SEQ"))
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument(
        "--decode-batches", type=int, nargs="+", default=[1, 8], help="batch sizes of the decode section"
    )
    p.add_argument("--sections", nargs="+", default=["train", "prefill", "decode", "memory"])
    p.add_argument(
        "--skip-paths",
        nargs="*",
        default=[],
        help="opt-in decode paths not to run (static, static_compiled, greedy_loop, greedy_loop_frozen, int8_weights, fp16_weights)",
    )
    p.add_argument("--label", default="", help="suffix of the result file name (e.g. baseline)")
    p.add_argument("--no-gpu", action="store_true")
    p.add_argument("--gpu-only", action="store_true", help="skip the CPU sections (on a GPU machine)")
    p.add_argument(
        "--gpu-sections",
        nargs="+",
        default=["parity", "train", "decode_b1", "decode_b8"],
        help="CUDA sections",
    )
    p.add_argument("--gpu-train-shape", type=int, nargs=2, default=[16, 1024], metavar=("BATCH", "SEQ"))
    p.add_argument("--gpu-device", default="cuda", help="'cpu': a dry run of the GPU sections on the CPU")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the GPU sections")
    p.add_argument("--gpu-profile", action="store_true", help="profile one ours_fast training step")
    p.add_argument(
        "--gpu-train-dropout",
        type=float,
        help="every dropout rate of every model in GPU training (default: the config's, GPT-2's 0.1); "
        "0 is how nanoGPT and llm.c state their MFU",
    )
    p.add_argument("--gpu-decode-bf16", action="store_true", help="also time greedy_loop on bf16 weights")
    p.add_argument(
        "--gpu-decode-eager-attention",
        action="store_true",
        help="also greedy_loop on the model loaded with attn_implementation='eager' (fp32 and bf16)",
    )
    p.add_argument(
        "--gpu-decode-autotune", action="store_true", help="with --gpu-decode-bf16: also an autotuned compile"
    )
    p.add_argument(
        "--gpu-hf-compiled", action="store_true", help="also time transformers' model under torch.compile"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    p.add_argument(
        "--render", type=Path, help="only rewrite the markdown table (and ratios) from this result JSON"
    )
    p.add_argument("--child-memory", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> Path | None:
    args = parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        result["ratios"] = summarise(result)
        args.render.write_text(json.dumps(result, indent=1) + "\n")
        (args.render.parent / latest_name(result)).write_text(markdown(result))
        print(markdown(result))
        return args.render
    if args.child_memory:
        torch.set_num_threads(args.threads[0])
        memory_child(args.child_memory, args.folder, *args.memory_shape)
        return None
    result = {
        **result_header(args),
        "preset": args.preset,
        "repeats": args.repeats,
        "train_repeats": args.train_repeats,
        "new_tokens": args.new_tokens,
        "memory_shape": args.memory_shape,
        "train_warmup": args.train_warmup,
        "prompt_len": PROMPT_LEN,
        "cpu": [],
    }
    from gpt2scratch import GPT2ScratchConfig

    args.n_positions = GPT2ScratchConfig.from_preset(args.preset).n_positions
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        dirs = dict(zip(("ours", "transformers"), write_folders(args.preset, Path(tmp)), strict=True))
        for threads in [] if args.gpu_only else args.threads:
            result["cpu"].append(run_threads(dirs, args, threads))
        if args.gpu_device == "cpu" or (torch.cuda.is_available() and not args.no_gpu):
            run_gpu(dirs, args, result, checkpoint=lambda: save(result, args.out))
    result["ratios"] = summarise(result)
    path = save(result, args.out)
    print(markdown(result))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
