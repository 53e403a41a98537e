"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by ``test_precision_and_memory.py``: one FSDP2 rollout.

Samples greedily from the tiny model sharded with FSDP2 (the loop's ``gathered_for_sampling`` around
``RolloutEngine.generate``), counting FSDP2's all-gathers (``FSDPParamGroup.unshard``), and from an unsharded
copy. Rank 0 prints ``{"unshards", "sharded_groups", "decode_tokens", "same_tokens"}`` as JSON.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

from effreason.models import load_checkpoint
from effreason.train import distributed
from effreason.train.rollout import RolloutEngine, SamplingParams


def main(model_dir: str) -> None:
    torch.set_num_threads(1)
    context = distributed.setup(torch.device("cpu"), "fsdp2")
    plain, _, _ = load_checkpoint(model_dir, device="cpu", dtype="float32")
    sharded, _, _ = load_checkpoint(model_dir, device="cpu", dtype="float32")
    policy = torch.nn.Module()
    policy.model = sharded
    distributed.wrap_policy(policy, context)
    params = SamplingParams(n=2, temperature=0.0, max_tokens=24, seed=0)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    expected = RolloutEngine(plain, pad_token_id=1).generate(prompts, params)
    calls = {"unshard": 0}
    unshard = FSDPParamGroup.unshard

    def counted(self, *args, **kwargs):
        calls["unshard"] += 1
        return unshard(self, *args, **kwargs)

    FSDPParamGroup.unshard = counted
    engine = RolloutEngine(sharded, pad_token_id=1)
    with distributed.gathered_for_sampling(policy, context):
        groups = engine.generate(prompts, params)
    same = [[c.token_ids for c in group] for group in groups] == [[c.token_ids for c in group] for group in expected]
    if context.is_main:
        print(json.dumps({"unshards": calls["unshard"], "sharded_groups": len(sharded.model.layers) + 1,
                          "decode_tokens": sum(len(c.token_ids) for group in groups for c in group),
                          "same_tokens": same}))
    dist.barrier()
    distributed.teardown(context)


if __name__ == "__main__":
    main(sys.argv[1])
