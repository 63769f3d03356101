"""The training loop, built on ``Accelerator``: setup → fit → evaluate → save.

Contract (see also ``args.py``): ``--batch-size`` is per process; every step count is in optimizer
steps; the learning-rate schedule (linear warm-up, then cosine to ``min_lr_ratio × lr``) is stepped
once per optimizer step by this loop, never by Accelerate, so it does not depend on the number of
processes. Resuming is bitwise exact on CPU: the data order comes from a seedable sampler keyed by
``--seed`` and the epoch, and the global RNGs are re-seeded with ``seed + step`` before every step. A resume
may make the same global batch otherwise (processes × batch × accumulation): the same examples per step.

Per-step loss: the loss of the whole global batch, however it is made (micro-batches, processes): for
classification the mean over its examples (every process and micro-batch holds the same number), for the
token-level losses (lm, instruction) the mean over all its target tokens, each micro-batch's summed loss divided
by the global count (``num_items_in_batch``), so a token weighs the same in a micro-batch with few targets as in
one with many (as one batch; not a mean of micro-batch means).

Faults: SIGINT/SIGTERM save a checkpoint at the next step boundary (in the final evaluation: at the next
batch) and raise ``RunInterrupted`` (exit 128 + signal); the final save, once begun, is never cut short;
a non-finite loss or gradient stops before the weights change (``NonFiniteError``, exit 3) or, with
``--on-nonfinite skip``, skips that update; a full disk while saving removes the partial write
(``DiskFullError``, exit 4). Checkpoint atomicity and the fault-injection hook live in ``checkpoints.py``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cli import CommandError, DiskFullError, is_disk_full, live_terminal
from ..fast import make_optimizer, peak_flops, reuse_freed_memory, training_flops_per_token
from ..io import default_file_modes
from .args import LOWER_IS_BETTER, TrainArgs, batch_layout, check_resume
from .checkpoints import (
    ARGS_FILE,
    check_output_dir,
    checkpoint_options,
    clear_output_dir,
    discard_partial,
    finish_checkpoint,
    fsync_tree,
    injected,
    list_checkpoints,
    lock_output_dir,
    read_trainer_state,
    resolve_resume,
    rotate_checkpoints,
    saved_weight_names,
    temp_checkpoint_dir,
    write_run,
)
from .data import (
    IGNORE_INDEX,
    check_same_data,
    check_same_tokenizer,
    collate,
    load_splits,
    tokenize_splits,
    write_splits,
)
from .lora import frozen_names, weights_digest
from .scoring import greedy_responses, instruction_prompts, token_losses

log = logging.getLogger("gpt2scratch.finetune")

MODEL_TASK = {"classification": "classification", "instruction": "causal-lm", "lm": "causal-lm"}
LAUNCH_HELP = (
    "The launcher started {n} processes, but each one sees a single-process run (no GPU, so "
    "--multi_gpu does not connect them): every process would train the same model alone. On CPU launch "
    "with: ACCELERATE_USE_CPU=yes accelerate launch --multi_gpu --num_processes {n} scripts/finetune.py ..."
)


BEST = "best"  # --save-best's model folder in the output folder

SAVES = {  # Trainer.phase: what a signal waits for
    "stopping": "stopping; finishing the checkpoint and run.json",
    "final save": "saving the finished run; finishing the model, metrics and run.json",
}


class LaunchError(ValueError):
    """The launcher started several processes that Accelerate does not connect."""


class NonFiniteError(CommandError):
    """A NaN or infinite loss or gradient under ``--on-nonfinite stop`` (the weights were not updated)."""

    exit_code = 3


class RunInterrupted(CommandError):
    """SIGINT or SIGTERM: a checkpoint was saved at the step boundary; exit code 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class RunState:
    """What a checkpoint records besides the Accelerate state."""

    step: int = 0
    history: dict = field(default_factory=lambda: defaultdict(list))  # name -> [(step, value)]
    before: dict = field(default_factory=dict)  # instruction: test metrics before training
    window: dict = field(
        default_factory=lambda: defaultdict(list)
    )  # training stats since the last evaluation
    best: dict = field(default_factory=dict)  # --save-best: {"metric", "value", "step"} of OUTPUT_DIR/best


# ----------------------------------------------------------------------------------------- setup


def make_accelerator(args: TrainArgs):
    """An ``Accelerator`` logging to TensorBoard in the output dir; refuses a launch whose processes are not
    connected, and Accelerate's own gradient accumulation (the loop has its own)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    accelerator = Accelerator(
        mixed_precision=_mixed_precision(args.mixed_precision),
        # else Accelerate's own setting (`accelerate launch --dynamo_backend`, ACCELERATE_DYNAMO_BACKEND)
        dynamo_backend="inductor" if args.compile else None,
        log_with="tensorboard",
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    accumulation = accelerator.gradient_accumulation_steps
    # Accelerate would divide every loss by it in backward(), and DeepSpeed step only every Nth call
    if accumulation != 1:
        raise ValueError(
            f"Accelerate's gradient accumulation is set to {accumulation} (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, "
            "from `accelerate launch --gradient_accumulation_steps` or a DeepSpeed config); this loop accumulates "
            f"by its own option: give --gradient-accumulation-steps {accumulation} and leave Accelerate's at 1."
        )
    launched = int(os.environ.get("WORLD_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)
    if launched > 1 and accelerator.num_processes == 1:
        raise LaunchError(LAUNCH_HELP.format(n=launched))
    return accelerator


def _mixed_precision(choice: str) -> str:
    """``auto``: bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU (where bf16 is no faster here)."""
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def load_for_task(args: TrainArgs, label_names: list[str]):
    """The model to train (``gpt2scratch.loading.load_model``) with labels, dropout and length settled."""
    from ..loading import load_model

    num_labels = len(label_names) if args.task == "classification" else None
    loaded = load_model(
        args.model, task=MODEL_TASK[args.task], tokenizer_dir=args.tokenizer_dir, num_labels=num_labels
    )
    model = loaded.model
    if args.task == "classification":
        from ..tokenizer import load_encoding

        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
        model.config.pad_token_id = load_encoding(loaded.tokenizer_dir).eot_token
    if args.dropout is not None:
        set_dropout(model, args.dropout)
    if args.activation_checkpointing:  # non-reentrant: works with frozen inputs (LoRA, last-block)
        model.activation_checkpointing_enable({"use_reentrant": False})
    n_positions = model.config.n_positions
    if args.max_length is None:
        args.max_length = n_positions
    elif args.max_length > n_positions:
        raise ValueError(f"--max-length {args.max_length} exceeds the model's n_positions={n_positions}.")
    if args.task == "instruction" and args.max_new_tokens >= n_positions:  # the test responses, at the end
        raise ValueError(
            f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in n_positions={n_positions}."
        )
    return model.train(), loaded.tokenizer_dir


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Set every dropout rate of the model (modules and config) to ``p``."""
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"):
        setattr(model.config, name, p)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if hasattr(module, "attn_dropout") and isinstance(module.attn_dropout, float):
            module.attn_dropout = p


def build_optimizer(model: torch.nn.Module, args: TrainArgs) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only, fused where possible (``gpt2scratch.fast.make_optimizer``)."""
    return make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of ``lr`` at optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, total: int, args: TrainArgs):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, args.warmup_steps, args.min_lr_ratio)
    )


def make_loader(ds, batch_size: int, train: bool, pad_id: int):
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=train, drop_last=train, collate_fn=partial(collate, pad_id=pad_id)
    )


# ----------------------------------------------------------------------------------------- the run


def run(args: TrainArgs) -> dict | None:
    """Train as ``args`` say; return the final metrics (None when stopped early by ``--stop-after``).

    The output folder is locked for the whole run (one live run per folder). Everything that can refuse the
    run (the folder, the options, a resume's settings and state, the data, the model) is settled before the
    first write into it, so a refused command leaves it as it was; the folder's own refusals come first."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    if not live_terminal():  # transformers' bars (loading, saving shards) would clutter the log lines
        hf_logging.disable_progress_bar()
    accelerator = make_accelerator(args)
    _setup_logging(accelerator)
    log.info("Training on %d process(es) (%s)", accelerator.num_processes, accelerator.distributed_type)
    backend = str(accelerator.state.dynamo_plugin.backend.value).lower()
    if backend != "no":
        log.info("torch.compile with backend %s: the first steps (and evaluations) wait for it", backend)
        if accelerator.device.type == "cpu":
            log.warning(
                "torch.compile on a CPU: the eager model's own products are faster here (a 124M step at 4 × 512: "
                "0.69× the eager tokens/s, benchmarks/bench_finetune_options.py); drop --compile for speed"
            )
    with _output_locked(accelerator, args):
        return _train(args, accelerator)


def _train(args: TrainArgs, accelerator) -> dict | None:
    """:func:`run` once the output folder is locked."""
    from accelerate.utils import set_seed

    if args.reuse_freed_memory and accelerator.device.type == "cpu" and reuse_freed_memory():
        log.info("Freed memory is kept in the process for reuse (--reuse-freed-memory)")
    checkpoint = resolve_resume(args.resume_from, Path(args.output_dir))
    if args.resume_from == "latest":
        log.warning("--resume-from latest: resuming from %s", checkpoint)
    recorded = read_trainer_state(checkpoint) if checkpoint is not None else {}  # what the run recorded
    saved = _resume_options(args, checkpoint, accelerator, recorded.get("processes"))
    out = Path(args.output_dir)
    _on_main(accelerator, out, partial(check_output_dir, out, checkpoint is not None, args.force))
    with accelerator.main_process_first():
        raw = load_splits(args)
    inputs = {"data": check_same_data(recorded.get("data"), raw, args.resume_from)}
    set_seed(args.seed)
    model, vocab = load_for_task(args, raw.label_names)
    if saved is not None:
        check_resume(args, *saved)  # again, with --max-length resolved by the model
    from ..tokenizer import load_encoding

    encoding = load_encoding(vocab)
    inputs["tokenizer"] = check_same_tokenizer(recorded.get("tokenizer"), encoding, args.resume_from, vocab)
    with accelerator.main_process_first():
        tokens = tokenize_splits(raw, args.task, encoding, args.max_length, args.response_loss_only)
    write_base = _base_writer(model, vocab) if args.method == "lora" else None
    from .lora import apply_method, count_parameters

    model = apply_method(model, args.method, args.task, args)
    trainable, total = count_parameters(model)
    log.info("Parameters: %d trainable of %d (%s)", trainable, total, args.method)
    if args.activation_checkpointing:
        log.info("Activation checkpointing: each block's activations are recomputed in the backward pass")
    trainer = Trainer(args, accelerator, model, tokens, raw, encoding, vocab, inputs)
    trainer.counts = {"trainable_parameters": trainable, "parameters": total}
    if checkpoint is not None:
        trainer.resume(checkpoint, recorded)
    _on_main(
        accelerator, out, partial(_prepare_output, args, checkpoint, trainer.state.step, raw, write_base)
    )
    del write_base  # its references keep the base's host copy alive on a GPU run
    return trainer.fit(resumed=checkpoint is not None)


@contextmanager
def _output_locked(accelerator, args: TrainArgs):
    """The output folder locked by the main process for the block (:func:`lock_output_dir`); every process
    stops when another run holds it."""
    release = _on_main(accelerator, Path(args.output_dir), partial(lock_output_dir, args.output_dir))
    try:
        yield
    finally:
        if release is not None:
            release()


def _setup_logging(accelerator) -> None:
    """Our messages at INFO on the main process only; other libraries' at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    level = logging.INFO if accelerator.is_local_main_process else logging.WARNING
    logging.getLogger("gpt2scratch").setLevel(level)


def _resume_options(
    args: TrainArgs, checkpoint: Path | None, accelerator, run_processes: int | None
) -> tuple | None:
    """The arguments of :func:`check_resume` for ``checkpoint`` (the options of its run, where they were read,
    the run's and this launch's number of processes), after refusing any that this command changes; None
    when not resuming or the checkpoint records no options. ``run_processes``: as the checkpoint records it
    (None in checkpoints written before 2026-12-03)."""
    processes = accelerator.num_processes
    if checkpoint is None:
        return None
    saved, source = checkpoint_options(checkpoint)
    if saved is None:
        log.warning(
            "%s: no record of the run's options; resuming without comparing them to this command's", source
        )
        return None
    layouts = (run_processes, processes) if run_processes else None
    check_resume(args, saved, source, layouts)
    run = (saved["batch_size"], run_processes, saved["gradient_accumulation_steps"])
    now = (args.batch_size, processes, args.gradient_accumulation_steps)
    if layouts and run != now and accelerator.is_main_process:
        log.warning(
            "resuming as %s, where the run had %s: the same global batch and the same examples in each step, "
            "but not bitwise the updates of an uninterrupted run",
            batch_layout(*now),
            batch_layout(*run),
        )
    return saved, source, layouts


def _base_writer(model, vocab: Path):
    """LoRA: a function that writes ``model`` as it is now, the base the adapters refer to, as a model folder.

    Called once every check has passed, after the adapters were added: LoRA never changes the base's tensors,
    so this holds references to them (no copy) and the config on an empty meta-device skeleton."""
    import copy

    from ..io import save_model_folder

    weights = model.state_dict()
    with torch.device("meta"):
        skeleton = type(model)(copy.deepcopy(model.config))
    return partial(
        save_model_folder, skeleton, tokenizer_dir=vocab, weights=lambda name: weights[name].detach().cpu()
    )


def _prepare_output(args: TrainArgs, checkpoint: Path | None, step: int, raw, write_base) -> None:
    """Create the output folder (or clear it for ``--force``), and write the options, the data splits,
    ``run.json`` (unfinished, at ``step``) and a LoRA run's ``base/`` (main process, every check passed)."""
    import yaml

    out = Path(args.output_dir)
    if args.force and checkpoint is None:
        clear_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARGS_FILE).write_text(yaml.safe_dump(args.to_dict(), sort_keys=False), encoding="utf-8")
    if raw.was_split and not (out / "data").exists():
        write_splits(raw, out / "data", args.task)
    write_run(out, finished=False, step=step)
    _truncate_log(out / "train_log.jsonl", step)
    if write_base is not None and not (out / "base").exists():
        write_base(out / "base")


def _on_main(accelerator, out: Path, action):
    """``action()`` on the main process only, its result there (None elsewhere). When it fails, every
    process raises: the main process its own error, the others one that points to it."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = action()
        except Exception as e:
            error = e
    failed = _any_process(accelerator, error is not None)
    if error is not None:
        raise error
    if failed:
        raise FileExistsError(f"--output-dir {out}: refused by the main process (see its message).")
    return result


def _frozen_outside_checkpoints(accelerator, model, method: str) -> frozenset[str]:
    """LoRA and last-block: the names of the frozen weights, which checkpoints leave out (the base model's;
    a 124M LoRA checkpoint is then 24 MB, not 498 MB). Not under FSDP or DeepSpeed, which save their
    own way."""
    from accelerate.utils import DistributedType

    whole = accelerator.distributed_type in (
        DistributedType.NO,
        DistributedType.MULTI_CPU,
        DistributedType.MULTI_GPU,
    )
    return frozen_names(model) if method != "full" and whole else frozenset()


def _any_process(accelerator, flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (so all processes stop together)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


class Trainer:
    """Holds the prepared objects of one run; ``fit`` trains, evaluates, checkpoints and saves."""

    def __init__(
        self, args: TrainArgs, accelerator, model, tokens: dict, raw, encoding, vocab: Path, inputs: dict
    ):
        self.args, self.accelerator, self.encoding, self.vocab, self.raw = (
            args,
            accelerator,
            encoding,
            vocab,
            raw,
        )
        self.out = Path(args.output_dir)
        self.inputs = inputs  # the data's and the tokenizer's digests, which a resume compares
        self.config = model.config
        self.num_labels = len(raw.label_names)
        self.state = RunState()
        pad = encoding.eot_token  # <|endoftext|> of the tokenizer in use (50256 in GPT-2's)
        train_loader = make_loader(tokens["train"], args.batch_size, train=True, pad_id=pad)
        eval_loaders = {name: make_loader(ds, args.batch_size, False, pad) for name, ds in tokens.items()}
        optimizer = build_optimizer(model, args)
        self.model, self.optimizer, self.train_loader = accelerator.prepare(model, optimizer, train_loader)
        self.eval_loaders = {name: accelerator.prepare(loader) for name, loader in eval_loaders.items()}
        # names as in the unwrapped model, as Accelerate saves and loads its state (no DDP "module." prefix)
        self.frozen = _frozen_outside_checkpoints(accelerator, self.unwrapped(), args.method)
        if self.frozen:
            accelerator.register_save_state_pre_hook(self._drop_frozen)
        self.steps_per_epoch = len(self.train_loader) // args.gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{raw.sources['train']}: {len(tokens['train'])} training examples do not fill one global batch "
                f"(--batch-size {args.batch_size} × {accelerator.num_processes} process(es) × "
                f"--gradient-accumulation-steps {args.gradient_accumulation_steps}); lower them or add data."
            )
        self.total_steps = args.max_steps or math.ceil(args.epochs * self.steps_per_epoch)
        # Saved in trainer_state.json, not registered with Accelerate, whose custom states load with weights_only=False.
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, args)
        self.signal: int | None = None  # SIGINT/SIGTERM received, acted on at the next step boundary
        # "training", "final evaluation", or one of the SAVES, which signals wait for: "stopping", "final save"
        self.phase = "training"
        self.peak_flops = device_peak_flops(accelerator.device)
        self.sample_ids = self._sample_prompt()

    def unwrapped(self) -> torch.nn.Module:
        """The model as built (a PEFT model for LoRA), outside DDP and ``torch.compile`` (``--compile``), whose
        module would name every weight ``_orig_mod.…``; mixed precision's autocast stays on its forward."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    # ------------------------------------------------------------------------------------- fit

    def fit(self, resumed: bool) -> dict | None:
        """Train from ``state.step`` (0, or the step :meth:`resume` restored) to the end or an early stop."""
        args, acc = self.args, self.accelerator
        acc.init_trackers("tensorboard")
        if not resumed:
            self._evaluate_before()
        log.info(
            "Global batch %d = %d per process × %d process(es) × %d accumulation; %d optimizer steps (%d per epoch)",
            args.batch_size * acc.num_processes * args.gradient_accumulation_steps,
            args.batch_size,
            acc.num_processes,
            args.gradient_accumulation_steps,
            self.total_steps,
            self.steps_per_epoch,
        )
        progress = _progress(self.total_steps, self.state.step, acc.is_local_main_process)
        if args.stop_after and args.stop_after <= self.state.step < self.total_steps:  # a resume past it
            self._pause(progress)
            log.info(
                "step %d is --stop-after %d or past it: nothing to train", self.state.step, args.stop_after
            )
            return None
        start, self.first_step = time.perf_counter(), self.state.step
        remaining = self._optimizer_batches(self.state.step) if self.state.step < self.total_steps else ()
        with self._stop_requests():
            metrics = self._run_steps(remaining, progress, start)
        if metrics is not None and acc.is_main_process:  # the run is saved: a signal now stops at once
            from ..hub import finish_run

            finish_run(self.out, args.push_to_hub)  # the model card; with --push-to-hub, the upload
        return metrics

    def _run_steps(self, remaining, progress, start: float) -> dict | None:
        """:meth:`fit`'s steps from ``state.step``, then the final evaluation and save (:meth:`_finish`)."""
        args, acc = self.args, self.accelerator
        for batches in remaining:
            stats = self.train_step(batches)
            self.state.step += 1
            step = self.state.step
            if not stats.pop("skipped", False):
                for key, value in stats.items():
                    self.state.window[key].append(value)
            self._log_step(step, stats)
            progress.update(1)
            progress.set_postfix(_postfix(stats))
            if step == self.total_steps or (args.eval_every and step % args.eval_every == 0):
                self._evaluate_during(step, self.state.window)
                self.state.window = defaultdict(list)
                if self._out_of_patience(step):
                    break
            if step < self.total_steps and args.save_every and step % args.save_every == 0:
                self.save_checkpoint()
            if step < self.total_steps and _any_process(acc, self.signal is not None):
                self._pause(progress)
                raise self._interrupted()
            if args.stop_after and step >= args.stop_after and step < self.total_steps:
                self._pause(progress)
                log.info("stopped after step %d (--stop-after); continue with --resume-from latest", step)
                return None
            if step >= self.total_steps:
                break
        progress.close()
        return self._finish(time.perf_counter() - start, progress)

    @contextmanager
    def _stop_requests(self):
        """While training and in the final evaluation, SIGINT/SIGTERM only set ``self.signal``: the run stops at
        the next step boundary, or evaluation batch, with a checkpoint; a second one stops at once
        (KeyboardInterrupt), unless the run is already saving (to stop, or the finished run): that save is
        never cut short."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return

        def request(signum, frame):
            name = signal.Signals(signum).name
            if self.phase in SAVES:
                log.warning("%s received: already %s first", name, SAVES[self.phase])
                return
            if self.signal is not None:
                raise KeyboardInterrupt
            self.signal = signum
            when = (
                "this step" if self.phase == "training" else f"this evaluation batch (step {self.state.step})"
            )
            log.warning(
                "%s received: saving a checkpoint after %s, then stopping (send it again to stop now)",
                name,
                when,
            )

        previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _interrupted(self) -> RunInterrupted:
        signum = self.signal or signal.SIGTERM  # another process received it
        return RunInterrupted(
            signum,
            f"{signal.Signals(signum).name}: stopped after step {self.state.step} and saved "
            f"{self.out / f'checkpoint-{self.state.step}'}; continue with --resume-from latest.",
        )

    def _optimizer_batches(self, start: int):
        """Yield the micro-batches of each optimizer step from ``start`` on, the epoch and offset set for resuming."""
        accum = self.args.gradient_accumulation_steps
        epoch, within = divmod(start, self.steps_per_epoch)
        while True:
            self.train_loader.set_epoch(epoch)
            loader = (
                self.accelerator.skip_first_batches(self.train_loader, within * accum)
                if within
                else self.train_loader
            )
            batches = iter(loader)
            for _ in range(self.steps_per_epoch - within):
                yield [next(batches) for _ in range(accum)]
            epoch, within = epoch + 1, 0

    def train_step(self, batches: list[dict]) -> dict:
        """One optimizer step over ``batches`` (gradient accumulation); returns the loss and throughput."""
        from accelerate.utils import set_seed

        acc, args = self.accelerator, self.args
        step = self.state.step + 1
        set_seed(args.seed + self.state.step, device_specific=True)
        self.model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=acc.device)
        correct = torch.zeros(2, device=acc.device)  # (right, total) of training predictions
        tokens = torch.zeros((), device=acc.device)
        share = self._loss_shares(batches)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            with nullcontext() if sync else acc.no_sync(self.model):
                out = self.model(**batch, **share)
                batch_loss = out.loss * float("nan") if i == 0 and injected("nan_loss", step) else out.loss
                if not share:  # a mean over this micro-batch's examples, all of one size
                    batch_loss = batch_loss / len(batches)
                acc.backward(batch_loss)
            loss_sum += batch_loss.detach().float()
            tokens += batch["attention_mask"].sum()
            if args.task == "classification":
                correct += torch.stack(
                    [(out.logits.argmax(-1) == batch["labels"]).sum(), torch.tensor(len(batch["labels"]))]
                ).to(correct)
        grad_norm = (
            acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm) if args.max_grad_norm else None
        )
        loss = acc.reduce(loss_sum, reduction="mean").item()
        injected("mid_step", step)
        skipped = self._check_finite(step, loss, grad_norm)
        if not skipped:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = acc.reduce(tokens, reduction="sum").item()
        elapsed = time.perf_counter() - t0
        stats = {"loss": loss, "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens / elapsed}
        if skipped:
            stats["skipped"] = True
        if grad_norm is not None:
            stats["grad_norm"] = float(grad_norm)
        if args.task == "classification":
            right, total = acc.reduce(correct, reduction="sum").tolist()
            stats["accuracy"] = right / total
        seq_len = max(b["input_ids"].shape[1] for b in batches)
        if self.peak_flops:
            stats["mfu"] = (
                training_flops_per_token(self.config, seq_len)
                * stats["tokens_per_s"]
                / (self.peak_flops * acc.num_processes)
            )
        return stats

    def _loss_shares(self, batches: list[dict]) -> dict:
        """For token-level losses (lm, instruction): ``num_items_in_batch`` (transformers' name), the number of
        target tokens of the whole global batch (every micro-batch, every process) over the number of processes,
        by which each micro-batch's summed loss is divided, so that every token weighs the same however the
        global batch is made, as in one batch (DDP averages the processes' gradients, hence "over the number of
        processes"). Classification: none (each micro-batch's mean over its examples, all micro-batches of one
        size)."""
        if self.args.task == "classification":
            return {}
        acc = self.accelerator
        targets = sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in batches).to(acc.device)
        total = acc.reduce(targets, reduction="sum").clamp(min=1)
        return {"num_items_in_batch": total / acc.num_processes}

    def _check_finite(self, step: int, loss: float, grad_norm) -> bool:
        """True when this step must be skipped (``--on-nonfinite skip``); raises under ``stop``. Gradients are
        checked unless an fp16 loss scaler is on (it skips overflowing steps itself)."""
        bad = None if math.isfinite(loss) else f"loss {loss}"
        if bad is None and self.accelerator.scaler is None:
            if grad_norm is None:
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
            if grad_norm is not None and not math.isfinite(float(grad_norm)):
                bad = f"gradient norm {float(grad_norm)}"
        if bad is None:
            return False
        accum = self.args.gradient_accumulation_steps
        epoch, within = divmod(step - 1, self.steps_per_epoch)
        where = (
            f"Non-finite {bad} at step {step} (epoch {epoch}, micro-batches {within * accum + 1}-"
            f"{(within + 1) * accum} of that epoch's seeded order, per process)"
        )
        if self.args.on_nonfinite == "skip":
            log.warning("%s: step skipped, the weights were not updated (--on-nonfinite skip).", where)
            return True
        raise NonFiniteError(
            f"{where}; training stopped before updating the weights and {self._last_checkpoint()}. "
            "Check the data, or continue with --resume-from latest --on-nonfinite skip; a lower --lr is a "
            "new run (another --output-dir, or --force without --resume-from)."
        )

    def _log_step(self, step: int, stats: dict) -> None:
        if step % self.args.log_every and step != self.total_steps:
            return
        self.accelerator.log({f"train/{k}": v for k, v in stats.items()}, step=step)
        if self.accelerator.is_main_process:
            with open(self.out / "train_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **stats}) + "\n")
            if not live_terminal():  # no progress bar: one line per logged step, as nanoGPT prints
                shown = ", ".join(f"{k} {v}" for k, v in _postfix(stats).items())
                log.info("step %d/%d: %s, lr %.3g", step, self.total_steps, shown, stats["lr"])

    def _evaluate_during(self, step: int, window: dict) -> None:
        """Validation metrics at ``step``; training loss/accuracy as the mean over the steps since the last evaluation."""
        history = self.state.history
        history["train_loss"].append((step, _mean(window["loss"])))
        if "accuracy" in window:
            history["train_accuracy"].append((step, _mean(window["accuracy"])))
        if "validation" not in self.eval_loaders:
            return
        metrics = self.evaluate("validation")
        for key, value in metrics.items():
            history[f"val_{key}"].append((step, value))
        self.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
        log.info("step %d: %s", step, ", ".join(f"val {k} {v:.4f}" for k, v in metrics.items()))
        if self.args.task == "lm":
            self._log_sample(step)
        if self.args.save_best and self._improves(metrics[self.args.save_best]):
            self.state.best = {
                "metric": self.args.save_best,
                "value": metrics[self.args.save_best],
                "step": step,
            }
            self._save_best()

    def _out_of_patience(self, step: int) -> bool:
        """``--early-stopping-patience N``: whether the last N evaluations (those after the best's, from the run's
        history, so a resumed run counts them too) all failed to improve on the best, before the last step."""
        patience, best = self.args.early_stopping_patience, self.state.best
        if not patience or step >= self.total_steps or best.get("metric") != self.args.save_best:
            return False
        since = [s for s, _ in self.state.history[f"val_{best['metric']}"] if s > best["step"]]
        if len(since) < patience:
            return False
        log.info("early stopping at step %d: no better validation %s than %.4f (step %d) in %d evaluations",
                 step, best["metric"], best["value"], best["step"], len(since))  # fmt: skip
        return True

    def _improves(self, value: float) -> bool:
        """Whether ``value`` of ``--save-best``'s metric beats the best so far (of that metric)."""
        best = self.state.best
        if best.get("metric") != self.args.save_best:
            return True
        return value < best["value"] if self.args.save_best in LOWER_IS_BETTER else value > best["value"]

    # ------------------------------------------------------------------------------------- evaluation

    def _evaluate_before(self) -> None:
        """Validation metrics at step 0 (the start of the curves); for instruction, the test response loss too."""
        if "validation" in self.eval_loaders:
            metrics = self.evaluate("validation")
            for key, value in metrics.items():
                self.state.history[f"val_{key}"].append((0, value))
            self.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=0)
            if self.args.task == "lm":
                self._log_sample(0)
        if self.args.task == "instruction" and "test" in self.eval_loaders:
            self.state.before = {"response_loss": self.evaluate("test")["loss"]}

    @torch.no_grad()
    def evaluate(self, split: str, stoppable: bool = False) -> dict | None:
        """Loss (per example for classification, per target token otherwise) and the task's metrics on ``split``;
        ``stoppable``: None as soon as a signal has reached any process (checked before each batch)."""
        acc, limit = self.accelerator, self.args.eval_max_batches
        self.model.eval()
        sums, counts, preds, refs = [], [], [], []
        for i, batch in enumerate(self.eval_loaders[split]):
            if limit and i >= limit:
                break
            if stoppable and _any_process(acc, self.signal is not None):
                self.model.train()
                return None
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            if self.args.task == "classification":
                loss = F.cross_entropy(logits, batch["labels"], reduction="none")
                count = torch.ones_like(loss)
                p, r = acc.gather_for_metrics((logits.argmax(-1), batch["labels"]))
                preds += p.tolist()
                refs += r.tolist()
            else:
                loss, count = token_losses(logits, batch["labels"])
            s, c = acc.gather_for_metrics((loss, count))
            sums.append(s.sum().item())
            counts.append(c.sum().item())
        self.model.train()
        metrics = {"loss": sum(sums) / max(sum(counts), 1)}
        if self.args.task == "classification":
            from .metrics import classification_metrics

            metrics.update(classification_metrics(preds, refs, num_labels=self.num_labels))
        elif self.args.task == "lm":
            metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        return metrics

    def _sample_prompt(self) -> list[int] | None:
        """The ids of ``--sample-prompt``, refused (before the run writes anything) where they fill the context."""
        if self.args.sample_prompt is None:
            return None
        from ..tokenizer import encode

        ids = encode(self.encoding, self.args.sample_prompt)
        if len(ids) >= self.config.n_positions:
            raise ValueError(
                f"--sample-prompt has {len(ids)} tokens: the model's n_positions={self.config.n_positions} leaves "
                "no room to continue it; give a shorter text."
            )
        return ids

    def _log_sample(self, step: int) -> None:
        """Greedy continuation of ``--sample-prompt`` (else of the first tokens of the validation text), written to
        samples.txt and TensorBoard and logged, ``|>`` between the prompt and the continuation."""
        if not self.accelerator.is_main_process:
            return
        first = self.sample_ids or self.eval_loaders["validation"].dataset[0]["input_ids"][:16]
        room = self.config.n_positions - len(first)
        ids = self._generate([first], min(self.args.max_new_tokens, room))[0]
        text = self.encoding.decode(first) + "|>" + self.encoding.decode(ids)
        with open(self.out / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"--- step {step}\n{text}\n")
        tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        tracker.add_text("sample", text, step)
        log.info("step %d sample: %s", step, text.replace("\n", "\\n"))

    def _generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy responses of the model (in eval mode meanwhile) to a batch of prompts (``greedy_responses``)."""
        model = self.unwrapped()
        model.eval()
        try:
            return greedy_responses(model, prompts, max_new_tokens, self.encoding.eot_token)
        finally:
            model.train()

    def instruction_responses(self) -> tuple[list[dict], float] | None:
        """Responses of the model to the test prompts, beside the references, and their ROUGE-L; None when a
        signal arrives meanwhile (checked before each batch of prompts, in this process)."""
        from .metrics import rouge_l

        records = self.raw.splits["test"].remove_columns(["_row"]).to_list()
        prompts = instruction_prompts(
            self.encoding, records, self.args.max_new_tokens, self.config.n_positions
        )
        responses = []
        for i in range(0, len(records), self.args.batch_size):
            if self.signal is not None:
                return None
            chunk = prompts[i : i + self.args.batch_size]
            responses += [
                self.encoding.decode(ids).strip() for ids in self._generate(chunk, self.args.max_new_tokens)
            ]
        for record, response in zip(records, responses, strict=True):
            record["response"] = response
        return records, rouge_l(responses, [r["output"] for r in records])

    # ------------------------------------------------------------------------------------- saving

    def save_checkpoint(self) -> Path:
        """``checkpoint-<step>/``: model/ (loadable model or adapter folder), state/ (Accelerate), trainer_state.json."""
        acc, step = self.accelerator, self.state.step
        tmp = temp_checkpoint_dir(self.out, step)
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        try:
            with _quiet_tied_weights_warning():
                acc.save_state(str(tmp / "state"))
            acc.wait_for_everyone()
            weights = self._gathered_weights()  # every process takes part
            if acc.is_main_process:
                self._write_model(tmp / "model", "../../base", weights)
                injected("enospc_checkpoint", step)
                final = finish_checkpoint(self.out, step, self._trainer_state())
                removed = rotate_checkpoints(self.out, self.args.keep_checkpoints)
                log.info(
                    "saved %s%s", final, f" (removed {', '.join(p.name for p in removed)})" if removed else ""
                )
        except BaseException as e:
            if acc.is_main_process:
                discard_partial(self.out, step)
            if is_disk_full(e):
                raise DiskFullError(
                    f"no space left on device while writing checkpoint-{step} in {self.out}: the partial "
                    f"checkpoint was removed; {self._last_checkpoint()}. Free some space, then "
                    "continue with --resume-from latest."
                ) from e
            raise
        acc.wait_for_everyone()
        return self.out / f"checkpoint-{step}"

    def _save_best(self) -> None:
        """``OUTPUT_DIR/best``: the model now (a model or adapter folder, as a checkpoint's ``model/``) and
        ``best.json`` (metric, value, step), built beside it and swapped in, so a failed write keeps the last."""
        weights = self._gathered_weights()  # every process takes part
        folder, tmp, old = self.out / BEST, self.out / ".best.tmp", self.out / ".best.old"
        if self.accelerator.is_main_process:

            def write(into: Path) -> None:
                self._write_model(into, "../base", weights)
                (into / "best.json").write_text(json.dumps(self.state.best, indent=1), encoding="utf-8")

            kept = " (the previous best is intact)" if folder.exists() else ""
            self._staged(tmp, write, "enospc_best", str(folder), kept)
            shutil.rmtree(old, ignore_errors=True)  # left by a swap cut short
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
            best = self.state.best
            log.info("step %d: best validation %s so far (%.4f), saved in %s", best["step"], best["metric"],
                     best["value"], folder)  # fmt: skip
        self.accelerator.wait_for_everyone()

    def _staged(
        self, tmp: Path, write: Callable[[Path], None], fault: str, what: str, kept: str = ""
    ) -> None:
        """A folder written into ``tmp`` (emptied first) by ``write``, its files given the default modes and
        synced to disk; a failure removes it, and a full disk is a DiskFullError naming ``what`` and what is
        intact (``kept``, the last checkpoint)."""
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write(tmp)
            injected(fault, self.state.step)
            default_file_modes(tmp)
            fsync_tree(tmp)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(e):
                raise DiskFullError(
                    f"no space left on device while writing {what}: the partial files were removed{kept} and "
                    f"{self._last_checkpoint()}. Free some space, then continue with --resume-from latest."
                ) from e
            raise

    def _last_checkpoint(self) -> str:
        kept = list_checkpoints(self.out)
        return f"the last good checkpoint {kept[-1]} is intact" if kept else "no checkpoint was saved before"

    def _trainer_state(self) -> dict:
        return {
            "step": self.state.step,
            "history": dict(self.state.history),
            "before": self.state.before,
            "window": dict(self.state.window),
            "best": self.state.best,
            "total_steps": self.total_steps,
            "scheduler": self.scheduler.state_dict(),
            "training_args": self.args.to_dict(),  # what a resume must keep (check_resume)
            "processes": self.accelerator.num_processes,  # the global batch is batch × processes × accumulation
            **self.inputs,  # "data", "tokenizer": a resume must read the same (check_same_data, check_same_tokenizer)
            **({"frozen": self._frozen_digest()} if self.frozen else {}),  # the weights the state leaves out
        }

    def resume(self, checkpoint: Path, saved: dict) -> None:
        """Restore the model, optimizer, RNG and run state of ``checkpoint``, whose ``trainer_state.json`` holds
        ``saved`` (reads only: nothing is written)."""
        import pickle

        try:  # Accelerate reads its .bin/.pkl files with torch.load(weights_only=True)
            self._load_state(checkpoint, saved.get("frozen"))
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"--resume-from {checkpoint}: refused: a file in state/ is not plain tensor data and was not "
                f"loaded (torch.load(weights_only=True): {str(e).splitlines()[0]}). Only resume from "
                "checkpoints you wrote yourself."
            ) from None
        if saved["total_steps"] != self.total_steps:
            log.warning(
                "resuming a run planned for %d steps with a plan of %d",
                saved["total_steps"],
                self.total_steps,
            )
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state.step = saved["step"]
        self.state.history = defaultdict(
            list, {k: [tuple(x) for x in v] for k, v in saved["history"].items()}
        )
        self.state.before = saved.get("before", {})
        self.state.window = defaultdict(list, saved.get("window", {}))
        self.state.best = saved.get("best", {})
        log.info("resumed from %s at step %d", checkpoint, self.state.step)

    def _drop_frozen(self, models, weights: list[dict], output_dir) -> None:
        """Accelerate's save hook: the checkpoint's state keeps the weights that train (the frozen ones are
        the base model's, recorded by :meth:`_frozen_digest`)."""
        for state in weights:
            for name in self.frozen:
                state.pop(name, None)

    def _frozen_digest(self) -> str:
        if not hasattr(self, "_frozen_sha256"):  # the frozen weights never change: hashed once
            self._frozen_sha256 = weights_digest(self.unwrapped(), self.frozen)
        return self._frozen_sha256

    def _load_state(self, checkpoint: Path, frozen_sha256: str | None) -> None:
        """``accelerator.load_state``; a state without the frozen weights (:meth:`_drop_frozen`) loads over
        the model's own once they are known to be the run's, and must hold every weight that trains."""
        state, saved = checkpoint / "state", saved_weight_names(checkpoint / "state")
        slim = bool(self.frozen) and saved is not None and not self.frozen & saved
        if slim:
            model = self.unwrapped()
            trained = {n for n, _ in model.named_parameters(remove_duplicate=False)} - self.frozen
            if trained - saved:
                raise ValueError(
                    f"--resume-from {checkpoint}: state/model.safetensors lacks trained weights "
                    f"({', '.join(sorted(trained - saved)[:3])}, …): it is not this run's checkpoint."
                )
            if frozen_sha256 != self._frozen_digest():
                raise ValueError(
                    f"--resume-from {checkpoint}: the frozen weights of --model {self.args.model} are not those "
                    "the run trained on top of (their digest is in trainer_state.json): put the model it started "
                    "from back at that path (a LoRA run keeps a copy in its base/ folder), or start a new run in "
                    "another --output-dir."
                )
        self.accelerator.load_state(str(state), **({"strict": False} if slim else {}))

    def _gathered_weights(self) -> dict | None:
        """Under FSDP, the whole state dict gathered from the shards (a collective: every process must call
        it); None otherwise, where the unwrapped model holds whole tensors already."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type != DistributedType.FSDP:
            return None
        return self.accelerator.get_state_dict(self.model)

    def _write_model(self, folder: Path, base: str, weights: dict | None = None) -> None:
        """A model folder (full, last-block) or a PEFT adapter folder naming its base ``base``: the path of
        ``base/`` relative to where the folder ends up, so a moved or copied run folder still finds it.
        ``weights``: the gathered state dict under FSDP (:meth:`_gathered_weights`)."""
        from ..io import write_model_folder
        from ..tokenizer import save_tokenizer

        model = self.unwrapped()
        folder.mkdir(parents=True, exist_ok=True)
        if self.args.method != "lora":
            write_model_folder(model, folder, self.vocab, weights=weights.__getitem__ if weights else None)
            return
        model.peft_config["default"].base_model_name_or_path = base
        # save_embedding_layers="auto" would look the (relative) base up from the working directory or the Hub
        extra = {"state_dict": weights} if weights else {}
        model.save_pretrained(str(folder), save_embedding_layers=False, **extra)
        save_tokenizer(self.vocab, folder, model_max_length=self.config.n_positions)

    def _pause(self, progress) -> None:
        """Checkpoint the current step (unless just saved) and mark the run unfinished (--stop-after, signals)."""
        self.phase = "stopping"
        progress.close()
        kept = list_checkpoints(self.out)
        if not kept or kept[-1].name != f"checkpoint-{self.state.step}":
            self.save_checkpoint()
        if self.accelerator.is_main_process:
            write_run(self.out, finished=False, step=self.state.step)
        self.accelerator.wait_for_everyone()  # no process tears down while another still writes
        self.accelerator.end_training()

    def _finish(self, train_seconds: float, progress) -> dict:
        """Final metrics on every split, the model at the top of the output folder, metrics.json and plots. A
        signal during the evaluation stops the run with a checkpoint of the last step (a resume evaluates and
        saves); once saving has begun, it waits."""
        acc = self.accelerator
        self.phase = "final evaluation"
        evaluated = self._final_evaluation()
        if evaluated is None:
            self._pause(progress)
            raise self._interrupted()
        metrics, responses = evaluated
        self.phase = "final save"
        acc.wait_for_everyone()
        weights = self._gathered_weights()  # every process takes part
        extra = {}
        if acc.is_main_process:
            if responses is not None:
                (self.out / "test-responses.json").write_text(
                    json.dumps(responses, indent=1, ensure_ascii=False), encoding="utf-8"
                )
            extra = self._summary(train_seconds)
            self._save_final(weights)
            (self.out / "metrics.json").write_text(
                json.dumps({**metrics, **extra}, indent=1), encoding="utf-8"
            )
            (self.out / "history.json").write_text(json.dumps(self.state.history, indent=1), encoding="utf-8")
            from .plots import save_plots

            save_plots({k: list(v) for k, v in self.state.history.items()}, self.out)
            write_run(self.out, finished=True, step=self.state.step)
            _log_final_metrics(metrics)
            _log_throughput(extra, self.first_step)
        acc.wait_for_everyone()
        acc.end_training()
        return {**metrics, **extra}

    def _final_evaluation(self) -> tuple[dict, list[dict] | None] | None:
        """Metrics on every split and, for instruction, the test responses (main process); None when a signal
        stops it (every process together)."""
        acc, metrics = self.accelerator, {}
        if _any_process(acc, self.signal is not None):  # received during the last step
            return None
        for name in self.eval_loaders:
            metrics[name] = self.evaluate(name, stoppable=True)
            if metrics[name] is None:
                return None
        if self.args.task != "instruction" or "test" not in self.eval_loaders:
            return metrics, None
        responses = self.instruction_responses() if acc.is_main_process else None
        if _any_process(acc, acc.is_main_process and responses is None):
            return None
        if responses is None:  # another process than the main one
            return metrics, None
        records, rouge = responses
        metrics["test"].update(
            response_loss_before=self.state.before.get("response_loss"),
            response_loss_after=metrics["test"]["loss"],
            rouge_l=rouge,
        )
        return metrics, records

    def _summary(self, train_seconds: float) -> dict:
        logged = [json.loads(line) for line in (self.out / "train_log.jsonl").read_text().splitlines()]
        mfu = [r["mfu"] for r in logged if "mfu" in r]
        return {
            **self.counts,
            "task": self.args.task,
            "method": self.args.method,
            "steps": self.state.step,
            "processes": self.accelerator.num_processes,
            "global_batch": self.args.batch_size
            * self.accelerator.num_processes
            * self.args.gradient_accumulation_steps,
            "train_seconds": train_seconds,
            "tokens_per_s": _mean([r["tokens_per_s"] for r in logged]),
            "mfu": _mean(mfu) if mfu else None,
            "mfu_note": None if mfu else "n/a: no known peak FLOP/s for this device (CPU)",
            **(
                {f"best_{k}": v for k, v in self.state.best.items()}  # best_metric, best_value, best_step
                if self.args.save_best
                else {}
            ),
        }

    def _save_final(self, weights: dict | None = None) -> None:
        """Write the final model into the top of the output folder (via a temporary folder, then moved in)."""
        from ..io import write_model_folder

        tmp = self.out / ".final.tmp"

        def write(into: Path) -> None:
            if self.args.method == "lora" and self.args.merge:
                merged = self.unwrapped().merge_and_unload()
                into.mkdir()
                write_model_folder(merged, into, self.vocab)
            else:
                self._write_model(into, "./base", weights)

        self._staged(tmp, write, "enospc_final", f"the final model into {self.out}")
        for item in tmp.iterdir():
            os.replace(item, self.out / item.name)
        tmp.rmdir()


# ----------------------------------------------------------------------------------------- helpers


def _log_final_metrics(metrics: dict) -> None:
    """One line with the test split's metrics, else the validation split's (lm runs have no test split)."""
    split = next((name for name in ("test", "validation") if name in metrics), None)
    if split is not None:
        shown = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics[split].items())
        log.info("%s metrics: %s", split, ", ".join(shown))


def device_peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak FLOP/s of ``device`` for MFU: a known CUDA GPU's (``fast.peak_flops``), else None."""
    return peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def _postfix(stats: dict) -> dict:
    """The progress bar's figures for a step: loss, tokens/s over all processes, and MFU where the device's
    peak is known (a CUDA GPU of ``fast.PEAK_BF16_FLOPS``)."""
    shown = {"loss": f"{stats['loss']:.4f}", "tok/s": f"{stats['tokens_per_s']:,.0f}"}
    if "mfu" in stats:
        shown["mfu"] = f"{stats['mfu']:.1%}"
    return shown


def _log_throughput(summary: dict, first_step: int) -> None:
    """One line with the run's speed: the steps this process ran and their time (evaluations and saves
    included), the mean tokens/s of the logged steps over all processes, and MFU or why there is none."""
    if first_step >= summary["steps"]:
        return  # a resume that only evaluated and saved
    mfu = f"MFU {summary['mfu']:.1%}" if summary["mfu"] is not None else f"MFU {summary['mfu_note']}"
    log.info(
        "steps %d-%d in %.1f s: %s tokens/s over all processes, %s",
        first_step + 1,
        summary["steps"],
        summary["train_seconds"],
        f"{summary['tokens_per_s']:,.0f}",
        mfu,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` by an interrupted run that is now resumed from ``step``."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if _logged_step(line) <= step]
        path.write_text("".join(line + "\n" for line in lines))


def _logged_step(line: str) -> float:
    """The step of a train_log.jsonl line; infinity for a line cut short by a kill (so it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class _TiedWeightsFilter(logging.Filter):
    """Drops Accelerate's "Removed shared tensor {...lm_head.weight} while saving" warning: the causal-LM head
    is tied to the token embeddings by design and comes back tied on loading. Other names still warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = re.search(r"Removed shared tensor \{([^}]*)\} while saving", record.getMessage())
        names = found.group(1).split(", ") if found else []
        return not names or not all(name.strip("'").endswith("lm_head.weight") for name in names)


@contextmanager
def _quiet_tied_weights_warning():
    """:class:`_TiedWeightsFilter` on Accelerate's logger for the duration of a save."""
    logger, quiet = logging.getLogger("accelerate.utils.other"), _TiedWeightsFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _progress(total: int, initial: int, enabled: bool):
    """The steps' progress bar, where it can redraw in place (else :meth:`Trainer._log_step` logs lines)."""
    from tqdm.auto import tqdm

    shown = enabled and live_terminal()
    return tqdm(total=total, initial=initial, disable=not shown, desc="finetune", dynamic_ncols=True)
