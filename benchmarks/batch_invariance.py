"""Are a list's completion log-probs bitwise the same in any batch on this device?

prefopt's step-0 rewards are exactly zero only if the reference pass (inference batches) and
the first training step (training batches) give a list the same log-probs. This computes each
list's log-probs alone and inside batches of 2, 4 and 8 lists of the same padded length, for
fp32 and bf16 autocast and both layouts, and prints the largest difference (0 = invariant).

    python benchmarks/batch_invariance.py [--model PATH]
"""

from __future__ import annotations

import argparse
import random

import torch

from prefopt.data.tokenize import TokenizedList
from prefopt.engine.logps import collate, completion_logps
from prefopt.engine.model import load_model, resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(resolve_model_path(args.model)).to(device).eval()
    rng = random.Random(0)
    vocab = model.config.vocab_size
    lists = [
        TokenizedList(
            tuple(rng.randrange(vocab) for _ in range(100 + rng.randrange(12))),
            tuple(
                tuple(rng.randrange(vocab) for _ in range(60 + rng.randrange(20))) for _ in range(4)
            ),
            (4.0, 3.0, 2.0, 1.0),
        )
        for _ in range(8)
    ]

    def logps(indices, precision, share_prompt):
        batch = collate(
            [lists[i] for i in indices], indices, 0, share_prompt=share_prompt, pad_multiple=128
        )
        with (
            torch.no_grad(),
            torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"),
        ):
            return completion_logps(model, batch.to(device)).logps.float().cpu()

    for precision in ("fp32", "bf16"):
        for share_prompt in (True, False):
            alone = torch.stack([logps([i], precision, share_prompt)[0] for i in range(len(lists))])
            worst = 0.0
            for size in (2, 4, 8):
                together = torch.cat(
                    [
                        logps(list(range(j, j + size)), precision, share_prompt)
                        for j in range(0, len(lists), size)
                    ]
                )
                worst = max(worst, float((together - alone).abs().max()))
            print(
                f"{device} {precision:4} {'packed' if share_prompt else 'rows':6}: largest |log-prob alone − "
                f"in a batch| = {worst:.3g}"
            )


if __name__ == "__main__":
    main()
