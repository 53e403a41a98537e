"""The paged-KV sampler: k completions per prompt, on the trainer's own weights.

``Sampler(model).generate(prompt_ids, SamplingParams(n=8, temperature=1.0, max_tokens=..., seed=...))``
returns ``n`` ``Completion`` objects per prompt. Files: ``params.py`` (SamplingParams),
``sequence.py`` (Sequence, Completion), ``block_manager.py`` (KV blocks, ref counts, prefix cache),
``scheduler.py`` (continuous batching, preemption), ``model.py`` (paged Qwen2/Llama forward),
``attention.py`` (paged attention and its backends), ``sampling.py`` (temperature/top-k/top-p,
Gumbel-max with counter-based seeds), ``fused_cpu.py`` (native CPU fusions of the decode step's
small ops), ``cuda_graph.py`` (decode graphs), ``engine.py`` (Sampler).
"""

from effreason.sampler.engine import Sampler
from effreason.sampler.params import SamplingParams
from effreason.sampler.sequence import Completion

__all__ = ["Sampler", "SamplingParams", "Completion"]
