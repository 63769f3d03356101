"""Model cards: the ``README.md`` a model folder carries to the Hub (YAML front matter + Markdown).

The card says what the model is (figures read from its config), how to load it with
``trust_remote_code``, where its weights came from, how it was trained and scored when that is
known, and GPT-2's known limitations. Code snippets name :data:`REPO_PLACEHOLDER`;
:func:`gpt2scratch.hub.push_to_hub` replaces it with the repository id it pushes to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

REPO_PLACEHOLDER = "YOUR_USER/YOUR_MODEL"
LICENSE = "mit"  # OpenAI released GPT-2's code and weights under a (modified) MIT licence
TAGS = ["gpt2", "gpt2scratch", "custom_code"]
CLASSIFIER = "GPT2ScratchForSequenceClassification"


def model_card(
    config,
    *,
    title: str,
    source: str,
    training: dict | None = None,
    metrics: dict | None = None,
    base_model: str | None = None,
    pipeline_tag: str = "text-generation",
) -> str:
    """A complete model card for a folder holding ``config`` (a ``GPT2ScratchConfig``).

    ``source`` is Markdown saying where the weights came from; ``training`` (option -> value) and
    ``metrics`` (split -> {metric: value}, or metric -> value) become tables when given.
    """
    sections = [
        f"# {title}",
        _architecture(config),
        _usage(pipeline_tag),
        "## Where the weights came from\n\n" + source.strip(),
    ]
    if training:
        sections.append("## Training\n\n" + _key_value_table(training, "setting"))
    if metrics:
        sections.append("## Evaluation\n\n" + _metrics_table(metrics))
    sections.append(_limitations())
    return _front_matter(pipeline_tag, base_model) + "\n" + "\n\n".join(sections) + "\n"


def _front_matter(pipeline_tag: str, base_model: str | None) -> str:
    meta: dict[str, Any] = {"library_name": "transformers", "license": LICENSE, "tags": list(TAGS)}
    meta["pipeline_tag"] = pipeline_tag
    if base_model:
        meta["base_model"] = base_model
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def count_parameters(config) -> int | None:
    """Distinct parameters of the model ``config`` describes (tied embeddings counted once),
    built on the meta device so nothing is allocated; None when the config cannot be built."""
    try:
        import torch

        from .modeling_gpt2scratch import GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification

        cls = GPT2ScratchForSequenceClassification if _is_classifier(config) else GPT2ScratchForCausalLM
        with torch.device("meta"):
            model = cls(config)
        return sum(p.numel() for p in model.parameters())
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


def _usage(pipeline_tag: str) -> str:
    if pipeline_tag == "text-classification":
        code = f"""from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

repo = "{REPO_PLACEHOLDER}"
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)
logits = model(**tokenizer("Free entry in a weekly competition!", return_tensors="pt")).logits

classify = pipeline("text-classification", model=repo, trust_remote_code=True)
print(classify("Are we still meeting at noon?"))"""
    else:
        code = f"""from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

repo = "{REPO_PLACEHOLDER}"
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
ids = tokenizer("Every effort moves you", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))

generate = pipeline("text-generation", model=repo, trust_remote_code=True)
print(generate("Every effort moves you", max_new_tokens=20)[0]["generated_text"])"""
    note = (
        "`trust_remote_code=True` runs the two Python files in this repository; read them first if "
        "you do not trust the author. Pin a commit with `revision=` to keep running the code you read."
    )
    return "## How to use\n\n```python\n" + code + "\n```\n\n" + note


def _limitations() -> str:
    return (
        "## Limitations and bias\n\n"
        "GPT-2 was trained on WebText, text from outbound Reddit links, which is unfiltered and "
        "reflects the biases, stereotypes and factual errors of that material; OpenAI's own card "
        "(https://github.com/openai/gpt-2/blob/master/model_card.md) documents biased completions "
        "about gender, race and religion. It does not distinguish fact from fiction, so do not use it "
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
