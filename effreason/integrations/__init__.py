"""effreason inside other RL trainers: the paper's reward and the fused loss, called the way each trainer calls them.

* ``effreason.integrations.trl``   Hugging Face TRL: ``paper_reward`` (a reward function) and ``GRPOTrainer``
                                   (TRL's trainer with its policy loss computed by ``effreason.ops.fused_ppo_loss``).
* ``effreason.integrations.verl``  verl: a policy loss in verl's policy-loss registry and a batch ``compute_score``.

``docs/integrations.md`` maps each trainer's options onto the paper's objective.
"""
