"""Whether a model's weights may have changed since the sampler last looked: what empties the prefix cache.

Cached K/V are valid only for the weights that computed them. ``WeightUpdates.changed`` is True after any of:

* a weight tensor replaced (a parameter reassigned, or swapped by FSDP2's unshard): its ``data_ptr()`` moves;
* a step of any ``torch.optim.Optimizer`` in the process (torch's global ``register_optimizer_step_post_hook``);
* ``load_state_dict`` on the model or one of its modules (``nn.Module.register_load_state_dict_post_hook``);
* ``mark_changed()``: the caller's word for any other in-place change (``p.data.copy_(...)``, a hand-written
  update outside an optimizer), which no public torch hook reports.

Counting every optimizer step in the process, not only the model's, errs on the safe side: at worst a
prefix is recomputed.
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_num_updates = 0  # optimizer steps and state-dict loads seen in this process
_watched_modules: weakref.WeakSet = weakref.WeakSet()  # modules whose state-dict loads are counted


def _count_update(*_) -> None:
    global _num_updates
    _num_updates += 1


@functools.lru_cache(maxsize=None)
def _watch_optimizers() -> None:
    """Count every optimizer step from now on (registered once per process)."""
    register_optimizer_step_post_hook(_count_update)


class WeightUpdates:
    """Tracks the updates of one model's weights between ``changed`` calls."""

    def __init__(self, model: torch.nn.Module):
        _watch_optimizers()
        for module in model.modules():
            if module not in _watched_modules:
                module.register_load_state_dict_post_hook(_count_update)
                _watched_modules.add(module)
        self._last_seen: tuple | None = None

    def mark_changed(self) -> None:
        """The weights changed in a way no hook sees: the next ``changed`` is True."""
        self._last_seen = None

    def changed(self, weights: list[torch.Tensor]) -> bool:
        """Whether ``weights`` (the model's current tensors) may differ from those of the previous call."""
        seen = (_num_updates, tuple(tensor.data_ptr() for tensor in weights))
        changed, self._last_seen = seen != self._last_seen, seen
        return changed
