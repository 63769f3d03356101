"""What ``finetune``'s evaluation and ``gpt2scratch evaluate`` share: next-token losses over target tokens,
and greedy responses to Alpaca prompts (each stopped before ``<|endoftext|>``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX, format_prompt


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of next-token cross-entropy over target tokens (labels other than -100), and the number
    of those tokens."""
    logits, labels = logits[:, :-1], labels[:, 1:].to(logits.device)  # (B, T-1, V), (B, T-1)
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    loss = flat.view(labels.shape)  # (B, T-1); a (B, V, T) layout is ten times slower on CPU
    count = (labels != IGNORE_INDEX).float()
    return (loss * count).sum(-1), count.sum(-1)


@torch.no_grad()
def greedy_responses(model, prompts: list[list[int]], max_new_tokens: int, eot: int) -> list[list[int]]:
    """Greedy continuations of a batch of prompts (left-padded with ``eot``, on the model's device), each
    stopped before its first ``eot``. The model runs as it is (eval mode is the caller's choice)."""
    length, device = max(len(p) for p in prompts), model.device
    ids = torch.tensor([[eot] * (length - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eot
    )
    return [row[: row.index(eot)] if eot in row else row for row in out[:, length:].tolist()]


def instruction_prompts(
    encoding, records: list[dict], max_new_tokens: int, n_positions: int
) -> list[list[int]]:
    """The Alpaca prompt ids of ``records`` (``instruction``, ``input``), each keeping its last tokens so that
    ``max_new_tokens`` still fit in ``n_positions``."""
    room = n_positions - max_new_tokens
    if room < 1:
        raise ValueError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in n_positions={n_positions}."
        )
    return [
        encoding.encode(format_prompt(r["instruction"], r["input"]), allowed_special="all")[-room:]
        for r in records
    ]
