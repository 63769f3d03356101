"""Options of ``finetune``: one dataclass, filled from defaults, then ``--config FILE.yaml``, then the CLI.

Every step count (``max_steps``, ``eval_every``, ``save_every``, ``warmup_steps``) counts optimizer
steps; ``batch_size`` is per process, so the global batch is batch × processes × accumulation.

A run records its options in ``training_args.yaml`` (:meth:`TrainArgs.to_dict`), less the ones that only
concern one invocation, so the file can be given back with ``--config``. Resuming keeps the recorded
options: only those in ``RESUME_MAY_CHANGE`` may differ (:func:`check_resume`), and the per-process batch
and accumulation as long as the global batch stays (another number of processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

TASKS = ("classification", "instruction", "lm")
METHODS = ("full", "lora", "last-block")
PRECISIONS = ("auto", "no", "bf16", "fp16")
NONFINITE = ("stop", "skip")
# --save-best: the validation metrics of each task, and those where lower is better
BEST_METRICS = {
    "classification": ("loss", "accuracy", "precision", "recall", "f1"),
    "lm": ("loss", "perplexity"),
    "instruction": ("loss",),
}
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
# What one command does, not what the run is: left out of training_args.yaml.
PER_INVOCATION = ("config", "resume_from", "stop_after", "force")
# Options a resumed run may change: where and how often it logs, evaluates and saves, when it stops,
# what happens at the end, how fast and in how much memory it computes. Every other option shapes the
# weights and must match the checkpoint's run.
RESUME_MAY_CHANGE = frozenset(
    {
        *PER_INVOCATION,
        "output_dir",
        "max_steps",  # a changed plan is warned about (the schedule stretches from the resumed step on)
        "epochs",
        "eval_every",
        "eval_max_batches",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "on_nonfinite",
        "reuse_freed_memory",
        "compile",  # compiled products round differently from eager ones: the steps after it too
        "activation_checkpointing",  # the same values, recomputed
        "max_new_tokens",
        "sample_prompt",
        "save_best",  # another metric starts its record afresh
        "early_stopping_patience",
        "merge",
        "push_to_hub",
    }
)
# May change on a resume whose checkpoint records its number of processes, if the global batch stays.
GLOBAL_BATCH = frozenset({"batch_size", "gradient_accumulation_steps"})
PATH_OPTIONS = ("model", "train_file", "validation_file", "test_file", "tokenizer_dir")


@dataclass
class TrainArgs:
    """Everything a training run needs; field ``foo_bar`` is the option ``--foo-bar``."""

    task: str = field(
        default="classification", metadata={"help": "classification | instruction | lm", "choices": TASKS}
    )
    model: str = field(
        default="init:tiny",
        metadata={
            "help": "model folder, OpenAI checkpoint folder, transformers GPT-2 folder, checkpoint, or init:PRESET"
        },
    )
    method: str = field(default="full", metadata={"help": "full | lora | last-block", "choices": METHODS})
    output_dir: str | None = field(
        default=None, metadata={"help": "where the final model, checkpoints and logs go"}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "CSV/TSV/JSON/JSONL/text file, or SMSSpamCollection"}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "default: a deterministic 10%% of the training data"}
    )
    test_file: str | None = field(default=None, metadata={"help": "held-out data scored once at the end"})
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "uci:sms_spam (downloaded and cached), or a Hugging Face Hub dataset id (train split required; validation/test used when present)"
        },
    )
    text_column: str | None = field(default=None, metadata={"help": "default: 'text'"})
    label_column: str = field(default="label", metadata={"help": "classification label column"})
    epochs: float = field(
        default=1.0, metadata={"help": "passes over the training data (ignored with --max-steps)"}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps to run (overrides --epochs)"}
    )
    batch_size: int = field(default=8, metadata={"help": "examples per process per micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay, applied to matrices only"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps before the cosine decay"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of --lr"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 disables)"})
    max_length: int | None = field(
        default=None, metadata={"help": "tokens per example / LM block (default: n_positions)"}
    )
    seed: int = field(default=123, metadata={"help": "seed for initialisation, data order and dropout"})
    split_seed: int = field(default=123, metadata={"help": "seed of the deterministic train/val/test split"})
    balance: bool = field(
        default=False, metadata={"help": "classification: down-sample every class to the rarest"}
    )
    response_loss_only: bool = field(
        default=True, metadata={"help": "instruction: loss on response tokens only"}
    )
    dropout: float | None = field(default=None, metadata={"help": "override all dropout rates of the model"})
    mixed_precision: str = field(
        default="auto", metadata={"help": "auto | no | bf16 | fp16", "choices": PRECISIONS}
    )
    reuse_freed_memory: bool = field(
        default=False,
        metadata={
            "help": "CPU: keep memory freed by tensors in the process for the next step (glibc malloc; "
            "gpt2scratch.fast.reuse_freed_memory): faster multi-threaded steps for a higher peak RSS"
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the model for training and evaluation (Accelerate's dynamo backend "
            "'inductor', as `accelerate launch --dynamo_backend inductor` sets it): pays on a GPU; the first "
            "steps wait for the compilation"
        },
    )
    activation_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "(gradient checkpointing) recompute each block's activations in the backward pass instead "
            "of keeping them: less memory for one more forward pass of the blocks per step, the same results"
        },
    )
    eval_every: int | None = field(
        default=None, metadata={"help": "evaluate every N optimizer steps (and at the end)"}
    )
    eval_max_batches: int | None = field(
        default=None, metadata={"help": "cap evaluation at N batches per split"}
    )
    save_every: int | None = field(default=None, metadata={"help": "checkpoint every N optimizer steps"})
    keep_checkpoints: int | None = field(
        default=None,
        metadata={
            "help": "keep only the newest N complete checkpoints (older ones deleted after a new one is complete)"
        },
    )
    on_nonfinite: str = field(
        default="stop",
        metadata={
            "help": "a NaN/inf loss or gradient: stop (exit 3, last checkpoint kept) | skip (no update for that step)",
            "choices": NONFINITE,
        },
    )
    log_every: int = field(default=1, metadata={"help": "log the training loss every N optimizer steps"})
    stop_after: int | None = field(
        default=None,
        metadata={
            "help": "checkpoint and stop after N steps (time-boxed jobs); resume with --resume-from latest"
        },
    )
    resume_from: str | None = field(
        default=None, metadata={"help": "a checkpoint folder, or 'latest' in --output-dir"}
    )
    max_new_tokens: int = field(
        default=64, metadata={"help": "tokens generated per test response / LM sample"}
    )
    save_best: str | None = field(
        default=None,
        metadata={
            "help": "keep the model of the best validation METRIC so far in OUTPUT_DIR/best, replaced at each "
            "evaluation that improves on it (loss, perplexity: lowest; accuracy, precision, recall, f1: highest)"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "with --save-best: finish the run (final evaluation and save) once N evaluations in a row "
            "have not improved on the best"
        },
    )
    sample_prompt: str | None = field(
        default=None,
        metadata={
            "help": "lm: the text that each evaluation's greedy sample continues (default: the first 16 tokens "
            "of the validation text)"
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: str = field(
        default="c_attn,c_proj,c_fc", metadata={"help": "comma-separated module names"}
    )
    last_n_blocks: int = field(default=1, metadata={"help": "last-block method: blocks left trainable"})
    merge: bool = field(default=False, metadata={"help": "LoRA: merge the adapter into a plain model folder"})
    tokenizer_dir: str | None = field(default=None, metadata={"help": "folder with encoder.json + vocab.bpe"})
    force: bool = field(default=False, metadata={"help": "replace an output folder that holds a run"})
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "Hub repo to push the final model to (LoRA: adapter; base to REPO_ID-base)"},
    )
    config: str | None = field(
        default=None, metadata={"help": "YAML file of these options (CLI values override it)"}
    )

    def validate(self) -> TrainArgs:
        """Raise a ValueError naming the option for any value that cannot work; return self."""
        if self.resume_from and self.resume_from != "latest" and not Path(self.resume_from).is_dir():
            raise FileNotFoundError(
                f"--resume-from {self.resume_from}: no such checkpoint folder. Give a checkpoint-<step> folder "
                "or 'latest' (the newest checkpoint in --output-dir)."
            )
        _check_choice("task", self.task, TASKS)
        _check_choice("method", self.method, METHODS)
        _check_choice("mixed-precision", self.mixed_precision, PRECISIONS)
        _check_choice("on-nonfinite", self.on_nonfinite, NONFINITE)
        if not self.output_dir:
            raise ValueError("--output-dir is required (where the model, checkpoints and logs go).")
        if not (self.train_file or self.dataset):
            raise ValueError("Give --train-file FILE (or --dataset HUB_ID) with the training data.")
        if self.train_file and self.dataset:
            raise ValueError("Give either --train-file or --dataset, not both.")
        for name in (
            "batch_size",
            "gradient_accumulation_steps",
            "log_every",
            "lora_r",
            "last_n_blocks",
            "max_new_tokens",
        ):
            _check_positive(name, getattr(self, name))
        for name in (
            "max_steps",
            "eval_every",
            "save_every",
            "max_length",
            "stop_after",
            "eval_max_batches",
            "keep_checkpoints",
            "early_stopping_patience",
        ):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if self.task == "lm" and self.max_length is not None and self.max_length < 2:
            raise ValueError(
                f"--max-length {self.max_length}: a language-model block of N tokens predicts N - 1 of them; give 2 "
                "or more."
            )
        if self.push_to_hub is not None:  # checked here, not after the training it would follow
            from ..hub import check_repo_id

            check_repo_id(self.push_to_hub, "--push-to-hub")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError(f"--epochs must be > 0, got {self.epochs} (or give --max-steps).")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("--lr must be > 0, --weight-decay and --warmup-steps >= 0.")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}.")
        if self.merge and self.method != "lora":
            raise ValueError("--merge only applies to --method lora.")
        if self.save_best is not None and self.save_best not in BEST_METRICS[self.task]:
            raise ValueError(
                f"--save-best {self.save_best!r}: --task {self.task} is validated on "
                f"{', '.join(BEST_METRICS[self.task])}."
            )
        if self.early_stopping_patience is not None and (self.save_best is None or self.eval_every is None):
            raise ValueError(
                "--early-stopping-patience needs --save-best METRIC (the metric it watches) and --eval-every N "
                "(how often it is measured)."
            )
        if self.sample_prompt is not None and (self.task != "lm" or not self.sample_prompt.strip()):
            raise ValueError(
                "--sample-prompt takes some text, and only with --task lm (instruction runs generate responses "
                "to their test split)."
            )
        return self

    @property
    def target_modules(self) -> list[str]:
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    def to_dict(self) -> dict:
        """The options that define the run (as written to ``training_args.yaml``; ``--config`` reads it back)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in PER_INVOCATION}


def check_resume(args: TrainArgs, saved: dict, source: str, processes: tuple[int, int] | None = None) -> None:
    """Refuse to resume with options that differ from ``saved``, the options of the checkpoint's run
    (``source`` names where they were read): the resumed run would not be the run it continues.
    An unresolved ``max_length`` (None: the model's n_positions) is not compared yet. ``processes``: the
    run's and this launch's number of processes, where the checkpoint records the run's: then the batch
    per process and the accumulation may change, the global batch may not."""
    may_change = RESUME_MAY_CHANGE | (GLOBAL_BATCH if processes else frozenset())
    changed = [
        f"{option_name(name)} {_shown(getattr(args, name))} (the run: {_shown(saved[name])})"
        for name in saved
        if name not in may_change
        and hasattr(args, name)
        and not (name == "max_length" and args.max_length is None)
        and _normalised(name, getattr(args, name)) != _normalised(name, saved[name])
    ]
    if changed:
        raise ValueError(
            f"--resume-from {args.resume_from}: changed from the run being resumed ({source}): {'; '.join(changed)}. "
            "A resumed run keeps its settings: drop these options (a resume takes the run's own), or start a "
            "new run in another --output-dir."
        )
    if processes:
        _check_global_batch(args, saved, *processes)


def batch_layout(batch_size: int, processes: int, accumulation: int) -> str:
    """How a global batch is made: ``B per process × P process(es) × A accumulation``."""
    return f"{batch_size} per process × {processes} process(es) × {accumulation} accumulation"


def _check_global_batch(args: TrainArgs, saved: dict, saved_processes: int, processes: int) -> None:
    """Refuse a resume whose global batch (batch × processes × accumulation) differs from the run's."""
    run = (saved["batch_size"], saved_processes, saved["gradient_accumulation_steps"])
    now = (args.batch_size, processes, args.gradient_accumulation_steps)
    if math.prod(run) != math.prod(now):
        raise ValueError(
            f"--resume-from {args.resume_from}: the run's global batch is {math.prod(run)} "
            f"({batch_layout(*run)}); this launch's would be {math.prod(now)} ({batch_layout(*now)}). Keep "
            f"the global batch: launch {saved_processes} process(es) as the run did, or set --batch-size and "
            f"--gradient-accumulation-steps so that batch × processes × accumulation = {math.prod(run)}; or "
            "start a new run in another --output-dir."
        )


def _normalised(name: str, value):
    """Paths compared as the files they name (``./a.csv`` = ``a.csv``); numbers by value."""
    if name in PATH_OPTIONS and isinstance(value, str) and not value.startswith("init:"):
        return os.path.realpath(os.path.expanduser(value))
    if name == "lora_target_modules" and isinstance(value, str):
        return sorted(m.strip() for m in value.split(",") if m.strip())
    return value


def _shown(value) -> str:
    return "unset" if value is None else str(value)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{name} {value!r} is not one of: {', '.join(choices)}.")


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one option per ``TrainArgs`` field; unset options stay absent so YAML values are not overridden."""
    for f in fields(TrainArgs):
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help")}
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _field_type(f)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(option_name(f.name), **kwargs)
    return parser


def _field_type(f: dataclasses.Field):
    text = str(f.type)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def build_parser(prog: str = "finetune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Fine-tune or train a gpt2scratch model.")
    return add_arguments(parser)


def from_namespace(ns: argparse.Namespace) -> TrainArgs:
    """Defaults ← (resuming) the options of the run being resumed ← ``--config`` YAML ← options given on
    the command line; then validated. So ``--output-dir RUN --resume-from latest`` alone resumes a run."""
    given = {f.name: getattr(ns, f.name) for f in fields(TrainArgs) if hasattr(ns, f.name)}
    values = load_yaml(given["config"]) if given.get("config") else {}
    values.update(given)
    return TrainArgs(**{**_resumed_run_options(values), **values}).validate()


def _resumed_run_options(values: dict) -> dict:
    """When resuming, the options the resumed run recorded (less one invocation's and its output folder)."""
    resume_from = values.get("resume_from")
    if not resume_from or not values.get("output_dir"):
        return {}
    if resume_from != "latest" and not Path(resume_from).is_dir():
        return {}  # validate() says there is no such folder
    from .checkpoints import checkpoint_options, resolve_resume

    saved, _ = checkpoint_options(resolve_resume(values["resume_from"], values["output_dir"]))
    known = {f.name for f in fields(TrainArgs)} - set(PER_INVOCATION) - {"output_dir"}
    return {name: value for name, value in (saved or {}).items() if name in known}


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    return from_namespace(build_parser().parse_args(argv))


def load_yaml(path: str | Path) -> dict:
    """The options in a YAML mapping (keys as ``lr`` / ``max-steps`` / ``max_steps``), checked by name and type.

    A ``config`` key is ignored (config files do not nest): ``training_args.yaml`` files of earlier versions
    hold one, and a run's own file is meant to be given back with ``--config``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path}: not valid YAML ({e}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option: value, got {type(data).__name__}.")
    known = {f.name: f for f in fields(TrainArgs)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "config":
            continue
        if name not in known:
            raise ValueError(f"--config {path}: unknown option {key!r}; the options are those of --help.")
        out[name] = _coerce(path, key, known[name], value)
    return out


def _coerce(path: Path, key: str, f: dataclasses.Field, value):
    """YAML value → the field's type; lists are accepted for target modules."""
    if value is None:
        return None
    if f.name == "lora_target_modules" and isinstance(value, list):
        return ",".join(map(str, value))
    kind = bool if f.type in ("bool", bool) else _field_type(f)
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"--config {path}: {key} must be true or false, got {value!r}.")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"--config {path}: {key} must be an integer, got {value!r}.")
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"--config {path}: {key} must be a number, got {value!r}.") from None
    return str(value) if kind is str else value
