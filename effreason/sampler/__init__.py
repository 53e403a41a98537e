"""The paged-KV sampler: k completions per prompt, on the trainer's own weights.

``Sampler(model).generate(prompt_ids, SamplingParams(n=8, temperature=1.0, max_tokens=..., seed=...))``
returns ``n`` ``Completion`` objects per prompt. The pipeline, host side first:

* ``params.py`` (SamplingParams), ``sequence.py`` (Sequence, Completion);
* ``engine.py``: ``Sampler``, the generate loop and the bookkeeping of drawn tokens;
* ``scheduler.py`` (continuous batching, preemption), ``block_manager.py`` (KV blocks, ref counts, prefix
  cache), ``weight_updates.py`` (when the prefix cache goes stale);
* ``model_runner.py``: the device side, each step's forward and draw; ``kv_cache.py`` (allocation),
  ``cuda_graph.py`` (decode graphs);
* ``models/``: one file per model family (``llama.py``, ``qwen2.py``, ``qwen3.py``) over the shared layer of
  ``models/layers.py``, chosen by the HF ``model_type``;
* ``attention.py`` (paged attention and its backends), ``sampling.py`` (temperature/top-k/top-p, Gumbel-max
  with counter-based seeds), ``cpu_decode.py`` (the native float32 CPU decode ops).
"""

from effreason.sampler.engine import Sampler
from effreason.sampler.params import SamplingParams
from effreason.sampler.sequence import Completion

__all__ = ["Sampler", "SamplingParams", "Completion"]
