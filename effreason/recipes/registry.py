"""The recipe registry: ``--recipe NAME`` looks its :class:`Recipe` up in ``RECIPES``.

A recipe is a method of the literature as settings of the one training loop: a reward of the reward
registry (``effreason.rewards``) and the training options its paper changes (group size, token limits,
clip range, advantage normalisation, group filter). It is one function returning those settings,
registered with its source; its docstring gives the method's formula::

    @register_recipe("toy", source="its paper, arXiv 0000.00000", knob="toy_scale")
    def toy() -> dict:
        \"\"\"Toy (its paper): r = 1[correct] - scale * len.\"\"\"
        return dict(reward="toy", group_size=16)

``python -m effreason.train --recipe toy`` applies the settings over the defaults (and a ``--preset``);
flags given on the command line win. ``knob`` names the setting that ``NAME:VALUE`` in
``python -m effreason.sweep --recipes`` varies (``paper:0.1`` is the paper's recipe with alpha 0.1).
The settings are ``TrainConfig`` field names; the config validates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: ``settings()`` (``TrainConfig`` field -> value), its source, the knob of ``NAME:VALUE``."""

    name: str
    settings: Callable[[], dict]
    source: str
    knob: str | None = None

    @property
    def summary(self) -> str:
        """The first line of the recipe's docstring."""
        return self.settings.__doc__.strip().splitlines()[0]


RECIPES: dict[str, Recipe] = {}
"""Every registered recipe by name, in registration order; the choices of ``--recipe``."""


def register_recipe(name: str, *, source: str, knob: str | None = None):
    """Decorator: register ``settings() -> dict`` as recipe ``name``; ValueError when the name is taken
    or the function has no docstring (the recipe's formula and source)."""

    def register(settings: Callable[[], dict]) -> Callable[[], dict]:
        if name in RECIPES:
            raise ValueError(f"recipe {name!r} is already registered")
        if not (settings.__doc__ or "").strip():
            raise ValueError(f"recipe {name!r}: {settings.__name__} needs a docstring with its formula and source")
        RECIPES[name] = Recipe(name, settings, source, knob)
        return settings

    return register


@dataclass(frozen=True)
class RecipeSpec:
    """One setting of a family sweep: a recipe, and the value of its knob (None: the recipe's own)."""

    name: str
    value: int | float | None = None

    @property
    def label(self) -> str:
        """``NAME`` or ``NAME:VALUE``, as written on the command line."""
        return self.name if self.value is None else f"{self.name}:{self.value:g}"

    @property
    def folder(self) -> str:
        """The run folder's name: ``NAME`` or ``NAME-VALUE``."""
        return self.name if self.value is None else f"{self.name}-{self.value:g}"

    def settings(self) -> dict:
        """The training settings that select this setting: the recipe's name and its knob's value."""
        settings = {"recipe": self.name}
        if self.value is not None:
            settings[RECIPES[self.name].knob] = self.value
        return settings


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_recipe_specs(text: str) -> tuple[RecipeSpec, ...]:
    """``"paper:0.1,paper:0.2,dler"`` -> recipe specs; ValueError naming ``recipes`` for an unknown name,
    a value for a recipe without a knob, a bad number or a repeated setting."""
    specs = []
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        name, _, value = part.partition(":")
        if name not in RECIPES:
            raise ValueError(f"recipes: unknown recipe {name!r} (known: {', '.join(RECIPES)})")
        if value and RECIPES[name].knob is None:
            raise ValueError(f"recipes: {name} has no knob, so {part!r} cannot set one")
        try:
            specs.append(RecipeSpec(name, _number(value) if value else None))
        except ValueError:
            raise ValueError(f"recipes: {part!r}: the value after ':' must be a number") from None
    if not specs or len({spec.label for spec in specs}) != len(specs):
        raise ValueError(f"recipes must be distinct comma-separated NAME or NAME:VALUE settings, got {text!r}")
    return tuple(specs)
