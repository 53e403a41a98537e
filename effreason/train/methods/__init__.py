"""The pluggable part of the one training loop: what a step does with its graded rollout.

The loop (:mod:`effreason.train.loop`) samples ``group_size`` responses per prompt from the live
model, grades them and hands the :class:`~effreason.train.rollout.Rollout` to the run's method:

* ``rl`` (:mod:`.rl`, default): the paper's length-penalised RL and the other rewards.
* ``rs-sft`` (:mod:`.rs_sft`): SFT on each prompt's shortest correct sample.
* ``dpo`` (:mod:`.dpo`): DPO, shortest correct chosen over longest correct.

A method is built as ``METHODS[name](trainer)`` once the model is loaded; it owns ``module`` (the
``torch.nn.Module`` whose forward is its loss, which the loop wraps for DDP/FSDP2 and optimises)
and ``update(rollout, alpha) -> metrics``, the step's optimizer steps; ``keeps_reference(config)`` says
whether it holds a frozen reference model (the memory plan counts it). Everything else (devices,
torchrun, the CPU thread policy, checkpoints and resume, evaluation, the run folder) is the loop's.
"""

from effreason.train.methods.dpo import DirectPreferenceOptimization
from effreason.train.methods.rl import ReinforcementLearning
from effreason.train.methods.rs_sft import RejectionSamplingSFT

METHODS = {method.name: method for method in (ReinforcementLearning, RejectionSamplingSFT, DirectPreferenceOptimization)}

__all__ = ["METHODS"]
