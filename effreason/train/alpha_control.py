"""``--target-token-ratio R``: choose alpha online instead of guessing it.

The reviewers' first complaint about the paper is that alpha is hard to choose. Here the user
asks for "R times the warm start's tokens" and an integral controller moves alpha::

    ratio_t   = EMA_t(mean rollout length) / L0          (L0: mean length of the first rollout)
    alpha_t+1 = clip(alpha_t + gain * (ratio_t - R), 0, 1)

Too long (ratio above R) raises alpha, too short lowers it. The EMA (``smoothing``) damps the
step-to-step noise of the rollout lengths. Its state is a plain dict so checkpoints restore it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class AlphaController:
    target_ratio: float
    alpha: float
    gain: float = 0.1
    smoothing: float = 0.7
    reference_length: float | None = None
    smoothed_length: float | None = None

    def update(self, mean_length: float) -> float:
        """Feed the mean response length of the latest rollout; returns alpha for the next step."""
        if mean_length <= 0:
            raise ValueError(f"mean_length must be > 0, got {mean_length}")
        if self.reference_length is None:
            self.reference_length = mean_length
        previous = self.smoothed_length if self.smoothed_length is not None else mean_length
        self.smoothed_length = self.smoothing * previous + (1 - self.smoothing) * mean_length
        error = self.smoothed_length / self.reference_length - self.target_ratio
        self.alpha = min(max(self.alpha + self.gain * error, 0.0), 1.0)
        return self.alpha

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "AlphaController":
        return cls(**state)
