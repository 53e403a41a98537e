"""effreason: length-penalised RL for efficient reasoning (Arora & Zanette, 2025).

Parts, one module or folder each:

* ``effreason.rewards``     the paper's length-normalised reward and the alternatives users compare.
* ``effreason.advantages``  RLOO, GRPO and Dr. GRPO advantages.
* ``effreason.losses``      the packed per-token PPO policy loss, KL terms and aggregation modes.
* ``effreason.ops``         fused log-prob / policy-loss ops and their pure-torch reference.
* ``effreason.sampler``     the paged-KV sampler (k completions per prompt on the trainer's own weights).
* ``effreason.tasks``       the built-in miniature task and the paper's prompt; ``effreason.warmstart``
                            its shipped "verbose reasoner" (``python -m effreason.warmstart`` rebuilds it).
* ``effreason.train``       ``python -m effreason.train``: the one training loop; its methods (``effreason.train.methods``)
                            are the paper's RL with the length-penalised reward, rejection-sampling SFT and DPO.
* ``effreason.grading``     answer extraction and math-verify grading; ``effreason.data`` the one data layer
                            (dataset specs and ``score_response``) of training, evaluation and the sweep.
* ``effreason.eval``        ``python -m effreason.eval``; ``effreason.sweep``: ``python -m effreason.sweep``.
* ``effreason.integrations`` the paper's reward and the fused loss for TRL (``GRPOTrainer``) and verl.
* ``effreason.models``      the one loader of Hugging Face checkpoints and run folders, EOS ids.

``effreason.backends()`` says which optional backends (native extension, CUDA, Triton) were found.
"""

from effreason._backends import backends

__version__ = "0.1.0"

__all__ = ["backends", "__version__"]
