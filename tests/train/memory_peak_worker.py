"""Run in a fresh process by ``test_memory_plan.py``: the measured peak memory of one update of the miniature.

Linux only. glibc serves every allocation of 64 KiB or more with its own mapping (``MALLOC_MMAP_THRESHOLD_``,
set by the caller), so a freed tensor leaves the resident set at once and the resident set follows the live
tensors. The peak resident set (``VmHWM``) is reset (``/proc/self/clear_refs``) after a warm-up step on a tiny
micro-batch, which creates the AdamW state and whatever a first step loads lazily. Prints JSON: ``start`` (resident
bytes before the model exists), ``before`` (after the warm-up, gradients freed), ``peak`` (during one update of
a padded micro-batch of ``rows`` x ``width`` tokens) and ``tensors`` (bytes of the parameters and AdamW state,
resident at ``before``).

    python tests/train/memory_peak_worker.py ROWS WIDTH PROMPT_TOKENS CHECKPOINTING(0/1)
"""

import json
import sys

import torch


def resident(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def micro_batch(rows: int, width: int, prompt_tokens: int, vocab_size: int):
    """Rows of prompt + response - 1 = ``width`` tokens down to ``width - 70``, padded to ``width``."""
    from effreason.train.packing import build_micro_batch

    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, vocab_size, (prompt_tokens,), generator=generator).tolist() for _ in range(rows)]
    responses = [torch.randint(4, vocab_size, (width + 1 - prompt_tokens - 10 * (row % 8),), generator=generator).tolist()
                 for row in range(rows)]
    old = [[-4.0] * len(response) for response in responses]
    correct = torch.tensor([row % 2 == 0 for row in range(rows)])
    return build_micro_batch(prompts, responses, old, correct, torch.zeros(rows), slice(0, rows), 1, 2)


def main(rows: int, width: int, prompt_tokens: int, checkpointing: bool) -> None:
    torch.set_num_threads(1)
    from effreason.models import load_checkpoint
    from effreason.train.loop import _enable_activation_checkpointing
    from effreason.train.methods.rl import PolicyLoss
    from effreason.train.step import optimizer_steps

    start = resident("VmRSS")
    model, _, _ = load_checkpoint(None, device="cpu", dtype="float32")
    model.train()
    if checkpointing:
        _enable_activation_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss = PolicyLoss(model, group_size=2, paper_objective=True, temperature=1.0,
                      loss_options=dict(clip_eps=(0.2, 0.2), loss_agg="seq-mean-token-mean"))

    def update(batch):
        optimizer_steps(loss, optimizer, scheduler, [[(batch, 1.0)]], lambda module, b: module(b, 0.2), grad_clip=1.0)

    vocab_size = model.config.vocab_size
    update(micro_batch(2, 24, 8, vocab_size))
    optimizer.zero_grad(set_to_none=True)
    batch = micro_batch(rows, width, prompt_tokens, vocab_size)
    before = resident("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    update(batch)
    tensors = sum(p.nbytes for p in model.parameters())
    tensors += sum(t.nbytes for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor))
    print(json.dumps({"start": start, "before": before, "peak": resident("VmHWM"), "tensors": tensors,
                      "tokens": batch.input_ids.numel()}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
