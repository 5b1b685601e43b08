"""Training engine: loop, hooks, checkpoints, run directories, distributed set-up."""

from lowbit.engine.checkpoint import load_checkpoint, save_checkpoint
from lowbit.engine.hooks import Hook
from lowbit.engine.trainer import Trainer, evaluate

__all__ = ["Hook", "Trainer", "evaluate", "load_checkpoint", "save_checkpoint"]
