"""Ops on the LM head and the RL objective.

* ``effreason.ops.reference``: the pure-torch oracle (materialised logits).
* ``effreason.ops.segment``: the paper's reward + RLOO advantage, native or torch.
"""

from effreason.ops import reference
from effreason.ops.segment import length_penalized_rloo

__all__ = ["reference", "length_penalized_rloo"]
