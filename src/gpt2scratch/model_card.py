"""Model cards: the ``README.md`` a model folder carries to the Hub (YAML front matter + Markdown).

The card says what the model is (figures read from its config), how to load it with
``trust_remote_code`` and a pinned ``revision``, where its weights came from, how it was trained
and scored when that is known (with the scores also as ``model-index`` metadata, which the Hub shows
beside the model), the training curves, and GPT-2's known limitations. Code snippets name
:data:`REPO_PLACEHOLDER`; :func:`gpt2scratch.hub.push_to_hub` replaces it with the repository id it
pushes to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

REPO_PLACEHOLDER = "YOUR_USER/YOUR_MODEL"
LICENSE = "mit"  # OpenAI released GPT-2's code and weights under a (modified) MIT licence
TAGS = ["gpt2", "gpt2scratch", "custom_code"]
CLASSIFIER = "GPT2ScratchForSequenceClassification"
PLOTS = {"loss-plot.png": "Loss", "accuracy-plot.png": "Accuracy"}  # written by training.plots


def model_card(
    config,
    *,
    title: str,
    source: str,
    training: dict | None = None,
    metrics: dict | None = None,
    base_model: str | None = None,
    pipeline_tag: str = "text-generation",
    plots: Sequence[str] = (),
    model_name: str | None = None,
) -> str:
    """A complete model card for a folder holding ``config`` (a ``GPT2ScratchConfig``).

    ``source`` is Markdown saying where the weights came from; ``training`` (option -> value, as in
    ``training_args.yaml``) and ``metrics`` (split -> {metric: value}, or metric -> value, as in
    ``metrics.json``) become tables when given, and the held-out splits' scores ``model-index``
    metadata under ``model_name`` (default: ``title``); ``plots`` are image files in the folder (names
    from :data:`PLOTS`).
    """
    sections = [
        f"# {title}",
        _architecture(config),
        _usage(pipeline_tag, (training or {}).get("task")),
        "## Where the weights came from\n\n" + source.strip(),
    ]
    if training:
        shown = _task_settings(training)
        sections.append("## Training\n\n" + _data_line(training) + _key_value_table(shown, "setting"))
    if metrics:
        sections.append("## Evaluation\n\n" + _metrics_table(metrics))
    if plots:
        sections.append("## Training curves\n\n" + "\n".join(f"![{PLOTS.get(p, p)}]({p})" for p in plots))
    sections.append(_limitations(str((training or {}).get("model") or "").startswith("init:")))
    meta = _front_matter(model_name or title, pipeline_tag, base_model, training or {}, metrics or {})
    return meta + "\n" + "\n\n".join(sections) + "\n"


def _front_matter(name: str, pipeline_tag: str, base_model: str | None, training: dict, metrics: dict) -> str:
    """YAML metadata through huggingface_hub's ``ModelCardData``, which writes the Hub's ``model-index`` schema."""
    from huggingface_hub import ModelCardData

    dataset = training.get("dataset")
    data = ModelCardData(
        library_name="transformers",
        license=LICENSE,
        tags=list(TAGS),
        pipeline_tag=pipeline_tag,
        base_model=base_model,
        datasets=[dataset] if dataset and _is_hub_id(dataset) else None,
        model_name=name,
        eval_results=_eval_results(pipeline_tag, training, metrics) or None,
    )
    return "---\n" + data.to_yaml() + "\n---\n"


def _is_hub_id(name: str) -> bool:
    return ":" not in name and name.count("/") == 1


def _eval_results(pipeline_tag: str, training: Mapping[str, Any], metrics: Mapping[str, Any]) -> list:
    """``EvalResult``s of every held-out split in ``metrics`` (not ``train``), finite numbers only."""
    from huggingface_hub import EvalResult

    results = []
    for split, values in metrics.items():
        if split == "train" or not isinstance(values, Mapping):
            continue
        dataset = _split_source(training, split)
        for metric, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                results.append(
                    EvalResult(
                        task_type=pipeline_tag,
                        dataset_type=dataset,
                        dataset_name=dataset,
                        dataset_split=split,
                        metric_type=metric,
                        metric_value=value,
                        metric_name=f"{split} {metric}",
                    )
                )
    return results


def _split_source(training: Mapping[str, Any], split: str) -> str:
    """Where a split came from: its own file, else the dataset or training file it was split off."""
    own = training.get(f"{split}_file")
    return str(own or training.get("dataset") or training.get("train_file") or "unknown")


# training settings that apply to some tasks or methods only: setting -> those tasks / methods
TASK_ONLY = {
    "response_loss_only": ("instruction",),
    "balance": ("classification",),
    "max_new_tokens": ("instruction", "lm"),
}
METHOD_ONLY = {
    **dict.fromkeys(("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge"), ("lora",)),
    "last_n_blocks": ("last-block",),
}


def _task_settings(training: Mapping[str, Any]) -> dict:
    """The run's settings less those of other tasks and methods (``response_loss_only`` means nothing to a
    classifier, ``lora_r`` nothing to full fine-tuning)."""
    task, method = training.get("task"), training.get("method")
    return {
        k: v
        for k, v in training.items()
        if task in TASK_ONLY.get(k, (task,)) and method in METHOD_ONLY.get(k, (method,))
    }


def _data_line(training: Mapping[str, Any]) -> str:
    source = training.get("dataset") or training.get("train_file")
    if not source:
        return ""
    held_out = [f"{s} `{training[f'{s}_file']}`" for s in ("validation", "test") if training.get(f"{s}_file")]
    split = "with " + " and ".join(held_out) if held_out else _split_note(training)
    return f"Training data: `{source}`, {split}. The options of the run:\n\n"


def _split_note(training: Mapping[str, Any]) -> str:
    """How finetune split a lone training source for this task (``training.data``'s rules)."""
    from .training.data import HOLDOUT_FRACTION, SPLIT_FRACTIONS

    task, seed = training.get("task"), training.get("split_seed")
    if task == "lm":
        return f"the last {HOLDOUT_FRACTION:.0%} of its packed blocks held out for validation"
    seeded = "" if seed is None else f" (split seed {seed})"
    if task in SPLIT_FRACTIONS:
        shares = "/".join(f"{f:.0%}" for f in SPLIT_FRACTIONS[task])
        return f"split deterministically into train/validation/test {shares}{seeded}"
    return f"{HOLDOUT_FRACTION:.0%} held out deterministically for validation{seeded}"


def meta_model(cls, config):
    """``cls(config)`` on the meta device, skipping the random initialisation: no memory, and a few ms
    instead of tens for GPT-2 124M (the weights are set or counted afterwards, never used as they are)."""
    import torch
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        model = cls(config)
    model.tie_weights()  # no_init_weights skips this too
    return model


def count_parameters(config) -> int | None:
    """Distinct parameters of the model ``config`` describes (tied embeddings counted once),
    built on the meta device so nothing is allocated; None when the config cannot be built."""
    try:
        from .modeling_gpt2scratch import GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification

        cls = GPT2ScratchForSequenceClassification if _is_classifier(config) else GPT2ScratchForCausalLM
        return sum(p.numel() for p in meta_model(cls, config).parameters())
    except Exception:  # a card without the figure beats no card
        return None


def _is_classifier(config) -> bool:
    return CLASSIFIER in (getattr(config, "architectures", None) or [])


def _architecture(config) -> str:
    kind = "a sequence classifier" if _is_classifier(config) else "a causal language model"
    rows = {
        "layers": config.n_layer,
        "attention heads": config.n_head,
        "embedding size (n_embd)": config.n_embd,
        "context length (tokens)": config.n_positions,
        "vocabulary": config.vocab_size,
    }
    if _is_classifier(config):
        rows["labels"] = ", ".join(str(v) for v in config.id2label.values())
    n = count_parameters(config)
    if n is not None:
        rows["parameters"] = f"{n:,} ({n / 1e6:.1f} M)"
    intro = (
        f"GPT-2, {kind}, written from scratch as Hugging Face `PreTrainedModel` classes by "
        "the gpt2scratch package (model type `gpt2scratch`). The modelling code travels "
        "with the weights (`configuration_gpt2scratch.py`, `modeling_gpt2scratch.py`), so it loads "
        "with `trust_remote_code=True` and needs only `torch` and `transformers`. The tokenizer is "
        "GPT-2's byte-level BPE (50257 tokens)."
    )
    return "## Model\n\n" + intro + "\n\n" + _key_value_table(rows, "architecture")


# an example request in the Alpaca template that instruction runs train on
INSTRUCTION_EXAMPLE = ("Rewrite the sentence in the passive voice.", "The chef cooked the meal.")


def _usage(pipeline_tag: str, task: str | None = None) -> str:
    if task == "instruction":
        code = _instruction_usage()
    elif pipeline_tag == "text-classification":
        code = f"""from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

repo = "{REPO_PLACEHOLDER}"
revision = "main"  # better: the commit sha of the code you reviewed (see below)
tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)
model = AutoModelForSequenceClassification.from_pretrained(repo, revision=revision, trust_remote_code=True)
logits = model(**tokenizer("Free entry in a weekly competition!", return_tensors="pt")).logits

classify = pipeline("text-classification", model=repo, revision=revision, trust_remote_code=True)
print(classify("Are we still meeting at noon?"))"""
    else:
        code = f"""from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

repo = "{REPO_PLACEHOLDER}"
revision = "main"  # better: the commit sha of the code you reviewed (see below)
tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(repo, revision=revision, trust_remote_code=True)
ids = tokenizer("Every effort moves you", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))

generate = pipeline("text-generation", model=repo, revision=revision, trust_remote_code=True)
print(generate("Every effort moves you", max_new_tokens=20)[0]["generated_text"])"""
    return "## How to use\n\n```python\n" + code + "\n```\n\n" + REMOTE_CODE_NOTE


def _instruction_usage() -> str:
    """Generation from the prompt template the model was fine-tuned on, decoding only the response."""
    from .training.data import format_prompt

    prompt = format_prompt(*INSTRUCTION_EXAMPLE)
    lines = "\n".join(f"    {line!r}" for line in prompt.splitlines(keepends=True))
    return f"""from transformers import AutoModelForCausalLM, AutoTokenizer

repo = "{REPO_PLACEHOLDER}"
revision = "main"  # better: the commit sha of the code you reviewed (see below)
tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(repo, revision=revision, trust_remote_code=True)
prompt = (  # the Alpaca template this model was fine-tuned on; leave out "### Input:" when there is none
{lines}
)
ids = tokenizer(prompt, return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))"""


REMOTE_CODE_NOTE = (
    "**Why `trust_remote_code=True`, and why pin `revision`.** The model type `gpt2scratch` is not part "
    "of transformers: its code is the two Python files in this repository (`configuration_gpt2scratch.py`, "
    "`modeling_gpt2scratch.py`), and `trust_remote_code=True` lets transformers import and run them on "
    'your machine, with your permissions. Read them first. With `revision="main"` every load runs '
    "whatever code the repository holds at that moment, so a later push (by the owner, or by anyone who "
    "obtains write access) changes what runs on your machine; set `revision` to the full commit sha you "
    "reviewed (listed under *Files and versions*) and the code, weights and tokenizer stay exactly those."
)


def _limitations(from_random_init: bool = False) -> str:
    origin = (
        "This model was trained from random initialisation on the data described above only, not on "
        "GPT-2's WebText: it knows nothing beyond that data and reflects its biases and errors."
        if from_random_init
        else "GPT-2 was trained on WebText, text from outbound Reddit links, which is unfiltered and "
        "reflects the biases, stereotypes and factual errors of that material; OpenAI's own card "
        "(https://github.com/openai/gpt-2/blob/master/model_card.md) documents biased completions "
        "about gender, race and religion."
    )
    return (
        "## Limitations and bias\n\n"
        + origin
        + " It does not distinguish fact from fiction, so do not use it "
        "where generated text must be true, and do not deploy it to people without reviewing outputs "
        "for your use. A fine-tuned model inherits these limitations, and is only as good as the data "
        "and the evaluation described above. The context window is limited to the length given above."
    )


def _key_value_table(rows: Mapping[str, Any], header: str) -> str:
    lines = [f"| {header} | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(_fmt(v))} |" for k, v in rows.items()]
    return "\n".join(lines)


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    """Splits as rows and metrics as columns; scalar entries (run-wide figures) in a second table."""
    splits = {k: v for k, v in metrics.items() if isinstance(v, Mapping)}
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, Mapping) and v is not None}
    parts = []
    if splits:
        names = list(dict.fromkeys(m for values in splits.values() for m in values))
        lines = ["| split | " + " | ".join(_cell(n) for n in names) + " |", "|---" * (len(names) + 1) + "|"]
        for split, values in splits.items():
            cells = [_cell(_fmt(values.get(n, ""))) for n in names]
            lines.append(f"| {_cell(split)} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if scalars:
        parts.append(_key_value_table(scalars, "figure"))
    return "\n\n".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _cell(text: Any) -> str:
    """Table cell text: pipes escaped and newlines flattened so the Markdown table stays intact."""
    return str(text).replace("|", "\\|").replace("\n", " ")
