"""The FSDP test's training run: a tiny model trained a few steps on a fixed global batch, either in one
process (``train(variant)``) or sharded over torchrun's processes with fully_shard (``python fsdp_worker.py
OUT``), which saves the losses and the gathered weights into OUT."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM
from gpt2scratch.training.sharding import full_state_dict, shard_model


def train(variant: dict, rank: int = 0, world: int = 1) -> tuple[GPT2ScratchForCausalLM, list[float]]:
    """Train on this rank's rows of the global batch (all of it when world == 1); mean loss of each step."""
    torch.manual_seed(0)
    config = GPT2ScratchConfig.from_preset(
        "tiny", vocab_size=101, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **variant
    )
    model = GPT2ScratchForCausalLM(config)
    data = torch.randint(0, 101, (4, 16), generator=torch.Generator().manual_seed(1))
    rows = data.chunk(world)[rank]
    if world > 1:
        from torch.distributed.tensor import DTensor

        shard_model(model)
        block_weight = model.transformer.h[0].attn.c_attn.weight
        assert isinstance(block_weight, DTensor) and block_weight.to_local().shape[0] < block_weight.shape[0]
    opt = torch.optim.SGD(
        model.parameters(), lr=0.5, momentum=0.9
    )  # linear in the gradients: rounding-level diffs
    losses = []
    for _ in range(4):
        loss = model(rows, labels=rows).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        losses.append(total.item() / world)
    return model, losses


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--variant", default="{}")
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, losses = train(json.loads(args.variant), rank, world)
    state = full_state_dict(model)
    if rank == 0:
        whole = GPT2ScratchForCausalLM(model.config)
        whole.load_state_dict(state)
        whole.save_pretrained(args.out)
        with open(os.path.join(args.out, "losses.json"), "w") as f:
            json.dump(losses, f)
    dist.barrier()
    dist.destroy_process_group()
    # Exit without the interpreter's teardown: after FSDP2 on gloo, a C++ static destructor at exit sometimes
    # finds a thread still joinable and aborts (SIGABRT, "terminate called without an active exception"; ~5 of
    # ~130 runs under load, every write done and the process group destroyed before it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
