"""Training stage: LoRA/QLoRA fine-tuning of a recipe's base model on its prepared data.

    from afinar.training import train
    result = train(recipe)          # afinar train RECIPE
"""

from afinar.training.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
