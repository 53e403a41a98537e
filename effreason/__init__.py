"""effreason: length-penalised RL for efficient reasoning (Arora & Zanette, 2025).

Parts, one module or folder each:

* ``effreason.rewards``     the paper's length-normalised reward and the alternatives users compare.
* ``effreason.advantages``  RLOO, GRPO and Dr. GRPO advantages.
* ``effreason.losses``      the packed per-token PPO policy loss, KL terms and aggregation modes.
* ``effreason.ops``         fused log-prob / policy-loss ops and their pure-torch reference.
* ``effreason.sampler``     the paged-KV sampler.
* ``effreason.train``       ``python -m effreason.train``.

``effreason.backends()`` says which optional backends (native extension, CUDA, Triton) were found.
"""

from effreason._backends import backends

__version__ = "0.1.0"

__all__ = ["backends", "__version__"]
