"""effreason from Hugging Face TRL (``pip install effreason[trl]``).

* ``paper_reward(alpha=0.2, num_generations=None, answer_column="answer")``: the paper's
  length-penalised reward as a TRL reward function (needs no TRL to import).
* ``GRPOTrainer``: ``trl.GRPOTrainer`` whose loss is ``effreason.ops.fused_ppo_loss`` on the last
  hidden states: a one-line switch, the same losses and gradients, less memory.
* ``GRPOLossSettings``, ``fused_grpo_loss``: the mapping of TRL's loss options, for custom trainers.

``docs/integrations.md`` lists the TRL settings that reproduce the paper's objective.
"""

from effreason.integrations.trl.reward import paper_reward

__all__ = ["paper_reward", "GRPOTrainer", "GRPOLossSettings", "fused_grpo_loss"]


def __getattr__(name: str):
    """Import the TRL-dependent parts on first use, so ``paper_reward`` works without TRL installed."""
    if name == "GRPOTrainer":
        from effreason.integrations.trl.trainer import GRPOTrainer

        return GRPOTrainer
    if name in ("GRPOLossSettings", "fused_grpo_loss"):
        from effreason.integrations.trl import loss

        return getattr(loss, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
