#!/usr/bin/env python
"""Fine-tune or train a gpt2scratch model: parse the options, then run the loop.

    python scripts/finetune.py --task classification --train-file ../shared/data/sms_spam/SMSSpamCollection ...
    accelerate launch --config_file configs/accelerate_ddp.yaml scripts/finetune.py ...
    ACCELERATE_USE_CPU=yes accelerate launch --multi_gpu --num_processes 2 scripts/finetune.py ...

Options: ``--help``, or src/gpt2scratch/training/args.py. Errors a user can act on print one line and exit with
the code README's exit-code table gives (2 bad input, 3 non-finite loss, 4 disk full, 130/143 interrupted).
"""

from __future__ import annotations

import sys

from gpt2scratch.cli import run_reporting
from gpt2scratch.training.args import parse_args


def main(argv: list[str] | None = None) -> int:
    from gpt2scratch.training.loop import run

    def train() -> None:
        run(parse_args(argv))

    return run_reporting("finetune", train)


if __name__ == "__main__":
    sys.exit(main())
