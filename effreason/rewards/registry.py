"""The reward registry: ``--reward NAME`` looks its :class:`Reward` up in ``REWARDS``.

A reward is one function of the rollout's :class:`RewardInputs` and its own options, registered
with the options it reads::

    SCALE = RewardOption("toy_scale", 1.0, "reward lost per token (its paper, eq. N)", check=check_non_negative)

    @register_reward("toy", source="its paper", options=(SCALE,))
    def toy(inputs: RewardInputs, *, toy_scale: float) -> torch.Tensor:
        return inputs.correct.float() - toy_scale * inputs.lengths.float()  # (S,)

Every option becomes a ``TrainConfig`` field and a ``--toy-scale`` flag (``effreason.train.config``
builds its fields from ``reward_options()`` when imported, so register in a module that
``effreason.rewards`` imports), validated by ``check`` when the config is built and saved in
the run's ``config.json``. Options shared by several rewards (L1's ``l1_beta``) are one
:class:`RewardOption` object listed by each.

A reward that carries something from one step to the next (LASER-D's adaptive target lengths) also
registers ``next_state(inputs, **options) -> dict``: the training loop calls it after every step's
rollout, keeps the JSON-able dict in its checkpoint (so a resumed run continues with it) and hands it
to the next step's reward as ``inputs.state``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch


@dataclass(frozen=True)
class RewardInputs:
    """What a reward sees of one rollout; samples come in groups of ``group_size`` consecutive answers to one prompt.

    correct: (S,) bool, the answer matched and the response ended with EOS (so truncated is wrong).
    lengths: (S,) int64 response lengths in tokens.
    group_size: samples per prompt (k).
    budget: the token budget of the budgeted rewards (``--length-budget``, default the step's rollout
        token limit: ``--max-new-tokens``, or the ``--token-limit-schedule`` round's).
    state: what the reward's ``next_state`` returned after the previous step (empty at the first step
        and for stateless rewards).

    Inputs a future reward needs are added here as fields with defaults, so the registered functions
    keep their signature.
    """

    correct: torch.Tensor
    lengths: torch.Tensor
    group_size: int
    budget: int
    state: Mapping = field(default_factory=dict)


def check_non_negative(name: str, value) -> None:
    """Require a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_fraction(name: str, value) -> None:
    """Require a real number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


@dataclass(frozen=True)
class RewardOption:
    """One option of a reward: the ``TrainConfig`` field ``name`` (flag ``--name-in-kebab-case``).

    ``default`` is the paper's value where it gives one (its type is the field's type); ``help`` says
    what it is and where it comes from; ``check(name, value)`` raises ``ValueError`` naming the option
    (``check_non_negative``, ``check_fraction``, ``effreason._validation.check_unit_interval``).
    """

    name: str
    default: float
    help: str
    check: Callable[[str, object], object]


@dataclass(frozen=True)
class Reward:
    """A registered reward: ``function(inputs, **options) -> (S,) float32`` and the options it reads.

    ``fused``: the fused ops implement this reward with its RLOO advantage, inside the loss
    (``effreason.ops.fused_policy_loss``, per micro-batch of whole groups) and in one native pass
    (``effreason.ops.length_penalized_rloo``); they take its options as keyword arguments.
    ``next_state``: ``next_state(inputs, **options) -> dict``, the state the next step's reward sees
    (module docstring); None for a stateless reward.
    """

    name: str
    function: Callable[..., torch.Tensor]
    options: tuple[RewardOption, ...]
    source: str
    fused: bool = False
    next_state: Callable[..., dict] | None = None

    def option_values(self, settings, **live) -> dict:
        """``{option name: value}`` read from ``settings`` (a ``TrainConfig``); ``live`` values (the
        alpha controller's alpha) replace the settings' of the same name."""
        return {option.name: live.get(option.name, getattr(settings, option.name)) for option in self.options}

    def __call__(self, inputs: RewardInputs, **options) -> torch.Tensor:
        """(S,) float32 rewards."""
        return self.function(inputs, **options)


REWARDS: dict[str, Reward] = {}
"""Every registered reward by name, in registration order; the choices of ``--reward``."""


def register_reward(name: str, *, source: str, options: tuple[RewardOption, ...] = (), fused: bool = False,
                    next_state: Callable[..., dict] | None = None):
    """Decorator: register ``function(inputs: RewardInputs, *, <one keyword per option>)`` as ``name``
    (with ``next_state`` taking the same arguments, for a reward that carries state across steps).

    Raises ``ValueError`` when ``name`` is taken, when the function's (or ``next_state``'s) keywords are
    not exactly the options' names, or when an option name is already registered as a different option.
    """

    def register(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        names = tuple(option.name for option in options)
        for takes_options in (function,) if next_state is None else (function, next_state):
            keywords = tuple(inspect.signature(takes_options).parameters)[1:]
            if keywords != names:
                raise ValueError(f"reward {name!r}: {takes_options.__name__} takes {keywords} after the inputs, its options are {names}")
        known = {option.name: option for option in reward_options()}
        for option in options:
            if known.get(option.name, option) != option:
                raise ValueError(f"reward {name!r}: option {option.name!r} is already registered as {known[option.name]}")
        REWARDS[name] = Reward(name, function, tuple(options), source, fused, next_state)
        return function

    return register


def reward_options() -> tuple[RewardOption, ...]:
    """The options of all registered rewards, each once, in registration order."""
    unique = {option.name: option for reward in REWARDS.values() for option in reward.options}
    return tuple(unique.values())


def rewards_using(option_name: str) -> tuple[str, ...]:
    """Names of the registered rewards that read the option ``option_name``."""
    return tuple(reward.name for reward in REWARDS.values() if any(option.name == option_name for option in reward.options))
