"""Ops on the LM head and the RL objective.

* ``effreason.ops.reference``: the pure-torch oracle (materialised logits).
* ``effreason.ops.segment``: the paper's reward + RLOO advantage, native or torch.
* ``effreason.ops.fused``: ``fused_logprobs``, ``fused_ppo_loss``, ``fused_policy_loss`` without the
  (N, V) logits, on the ``torch`` (chunked), ``triton`` and ``cuda`` backends.
"""

from effreason.ops import reference
from effreason.ops.fused import fused_logprobs, fused_policy_loss, fused_ppo_loss
from effreason.ops.segment import length_penalized_rloo

__all__ = ["reference", "length_penalized_rloo", "fused_logprobs", "fused_ppo_loss", "fused_policy_loss"]
