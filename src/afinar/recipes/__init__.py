"""Recipes: one YAML file describes a whole assistant; this package types, writes and lists them.

    recipe = load_recipe("faq.recipe.yaml", overrides=["train.epochs=1"])   # config.py
    write_starter_recipe("faq.csv")              # `afinar init` (starter.py)
    list_recipes()                               # the bundled seed recipes (catalog.py)

`known_models.py` holds the architectures of the seed recipes' GPU base models, so `afinar
recipes check` can validate their LoRA targets without downloading them.
"""

from afinar.recipes.config import (EvalConfig, GenerationConfig, GroundingConfig, GuardConfig, InterviewConfig, Recipe, field_docs,
                                   load_recipe, parse_overrides, validate_recipe)

__all__ = ["EvalConfig", "GenerationConfig", "GroundingConfig", "GuardConfig", "InterviewConfig", "Recipe", "field_docs", "load_recipe",
           "parse_overrides", "validate_recipe"]
