"""Benchmark ``convert-openai`` on a 124M-shaped checkpoint: wall time and peak memory.

The checkpoint (random values in OpenAI's layout, ≈500 MB, never committed) is written once by TensorFlow
in a throwaway virtualenv:

    /tmp/tfvenv/bin/python scripts/make_tf_fixtures.py --big /tmp/bench124M
    .venv/bin/python benchmarks/bench_convert_openai.py /tmp/bench124M --repeat 3

Every measurement runs in its own fresh process:
- conversion: RSS after the imports (the baseline), the process's peak RSS (``VmHWM``) once
  ``convert_openai`` has written the model folder, and the wall time of that call;
- reference: the wall time of reading the checkpoint's files and writing the same bytes (a plain copy).
Targets: peak RSS above the baseline < 1.5 × the checkpoint's size; conversion time < 3 × the copy's.
The CPU is shared, so each is repeated and the best run kept; every run is in the result file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONVERT = """
import json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
from gpt2scratch.conversion.openai import convert_openai
import gpt2scratch.io, safetensors.torch  # everything the conversion imports, before the baseline
baseline = status("VmRSS")
start = time.perf_counter()
convert_openai(sys.argv[1], sys.argv[2], dtype=sys.argv[3])
wall = time.perf_counter() - start
print(json.dumps({"baseline_rss": baseline, "peak_rss": status("VmHWM"), "wall_s": wall}))
"""

BREAKDOWN = """
import json, sys, time
from gpt2scratch.conversion.openai import from_openai_checkpoint
from gpt2scratch.io import prepare_for_save
from gpt2scratch.tokenizer import save_tokenizer
t0 = time.perf_counter()
model = from_openai_checkpoint(sys.argv[1])
t1 = time.perf_counter()
prepare_for_save(model)
model.save_pretrained(sys.argv[2])
t2 = time.perf_counter()
save_tokenizer(sys.argv[1], sys.argv[2], model_max_length=model.config.n_positions)
t3 = time.perf_counter()
print(json.dumps({"read_convert_s": t1 - t0, "save_pretrained_s": t2 - t1, "tokenizer_s": t3 - t2}))
"""

COPY = """
import json, sys, time, shutil
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir()
start = time.perf_counter()
for f in sorted(src.glob("*.ckpt.*")):
    with open(f, "rb") as fin, open(dst / f.name, "wb") as fout:
        while chunk := fin.read(16 << 20):
            fout.write(chunk)
print(json.dumps({"wall_s": time.perf_counter() - start}))
"""


def run_json(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def checkpoint_bytes(ckpt_dir: Path) -> int:
    return sum(f.stat().st_size for f in ckpt_dir.glob("*.ckpt.*") if not f.name.endswith(".meta"))


def prepare(ckpt_dir: Path, vocab_dir: Path | None) -> None:
    """OpenAI's folders carry the vocabulary; TF's generator does not write it: copy it in."""
    for name in ("encoder.json", "vocab.bpe"):
        if not (ckpt_dir / name).exists():
            if vocab_dir is None:
                raise SystemExit(f"{ckpt_dir / name} is missing; pass --vocab-dir")
            shutil.copyfile(vocab_dir / name, ckpt_dir / name)


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    import torch

    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "load_average_at_start": os.getloadavg(),
        "note": "CPU shared with other jobs; best of the repeats kept",
    }  # fmt: skip


def bench(ckpt_dir: Path, repeat: int, dtype: str) -> dict:
    size = checkpoint_bytes(ckpt_dir)
    converts, copies, phases = [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=ckpt_dir.parent) as tmp:
            converts.append(run_json(CONVERT, str(ckpt_dir), str(Path(tmp) / "out"), dtype))
        with tempfile.TemporaryDirectory(dir=ckpt_dir.parent) as tmp:
            phases.append(run_json(BREAKDOWN, str(ckpt_dir), tmp))
        with tempfile.TemporaryDirectory(dir=ckpt_dir.parent) as tmp:
            copies.append(run_json(COPY, str(ckpt_dir), str(Path(tmp) / "copy")))
    best_mem = min(c["peak_rss"] - c["baseline_rss"] for c in converts)
    best_wall, best_copy = min(c["wall_s"] for c in converts), min(c["wall_s"] for c in copies)
    return {
        "checkpoint_bytes": size,
        "dtype": dtype,
        "runs": {"convert": converts, "copy": copies, "phases_float32": phases},
        "best": {
            "peak_rss_above_baseline_bytes": best_mem,
            "peak_over_checkpoint": round(best_mem / size, 3),
            "convert_wall_s": round(best_wall, 2),
            "copy_wall_s": round(best_copy, 2),
            "convert_over_copy": round(best_wall / best_copy, 2),
            "phases_float32_s": {k: round(min(p[k] for p in phases), 2) for k in phases[0]},
        },
        "targets": {
            "peak_over_checkpoint < 1.5": best_mem / size < 1.5,
            "convert_over_copy < 3": best_wall / best_copy < 3,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--vocab-dir", type=Path, default=REPO.parent / "shared/data/gpt2_vocab")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args()
    prepare(args.ckpt_dir, args.vocab_dir)
    result = {"benchmark": "convert_openai", "date": datetime.date.today().isoformat(), "machine": machine()}
    result |= bench(args.ckpt_dir, args.repeat, args.dtype)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"convert_openai-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["best"], indent=2), json.dumps(result["targets"]), f"→ {path}", sep="\n")


if __name__ == "__main__":
    main()
