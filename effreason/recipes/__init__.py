"""Recipes (``--recipe NAME``): published ways to shorten reasoning as settings of the one training loop.

Each is a reward of ``effreason.rewards`` plus the training options its paper changes
(``effreason.recipes.catalog`` holds them with their formulas and sources):

* ``paper`` (Arora & Zanette 2025; knob ``alpha``), ``dler`` (DLER), ``laser-d`` (LASER-D), ``alp`` (ALP),
  ``thinkprune`` (ThinkPrune), ``gfpo`` (GFPO), ``shorterbetter`` (ShorterBetter);
* ``l1-exact``, ``l1-max`` (L1), ``kimi`` (Kimi k1.5), ``dapo-overlong`` (DAPO): the existing rewards as recipes.

``python -m effreason.sweep --recipes paper:0.1,dler,gfpo`` trains a family from one warm start on one
rollout-token budget and compares it on one evaluation. ``effreason.recipes.registry`` says how to add one.
"""

from effreason.recipes.registry import RECIPES, Recipe, RecipeSpec, parse_recipe_specs, register_recipe
from effreason.recipes import catalog  # noqa: F401  (registers the recipes)

__all__ = ["RECIPES", "Recipe", "RecipeSpec", "parse_recipe_specs", "register_recipe"]
