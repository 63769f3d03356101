#!/usr/bin/env python
"""Fine-tune or train a gpt2scratch model: parse the options, then run the loop.

    python scripts/finetune.py --task classification --train-file ../shared/data/sms_spam/SMSSpamCollection ...
    accelerate launch --config_file configs/accelerate_ddp.yaml scripts/finetune.py ...
    ACCELERATE_USE_CPU=yes accelerate launch --multi_gpu --num_processes 2 scripts/finetune.py ...

Options: ``--help``, or src/gpt2scratch/training/args.py. Errors a user can fix print one line and exit 2.
"""

from __future__ import annotations

import sys

from gpt2scratch.cli import USER_ERRORS
from gpt2scratch.training.args import parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        from gpt2scratch.training.loop import run

        run(parse_args(argv))
    except USER_ERRORS as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
