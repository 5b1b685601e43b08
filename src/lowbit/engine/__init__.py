"""Training engine: loop, callbacks, checkpoints, run directories, distributed set-up."""

from lowbit.engine.callbacks import Callback, LoopState, Phase, recalibrate_bn
from lowbit.engine.checkpoint import load_checkpoint, save_checkpoint
from lowbit.engine.evaluate import evaluate
from lowbit.engine.trainer import Trainer

__all__ = ["Callback", "LoopState", "Phase", "Trainer", "evaluate", "load_checkpoint",
           "recalibrate_bn", "save_checkpoint"]
