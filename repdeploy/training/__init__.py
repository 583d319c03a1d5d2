"""Training: the loop that `train`, `hypersearch` and QAT share (`loop`), its resumable state
(`state`), what `repdeploy train` runs on it (`recipes`) and RepOpt-VGG's hyper-search
(`hypersearch`). The optimizers and gradient multipliers they use are `repdeploy.optim`, below.

>>> from repdeploy.training import TrainConfig, train   # doctest: +SKIP
"""

from __future__ import annotations

from .hypersearch import SearchResult, hypersearch
from .loop import EpochRecord, TrainConfig, TrainHook, TrainResult, top1_accuracy, train
from .recipes import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, train_architecture

__all__ = ["train", "TrainConfig", "TrainResult", "EpochRecord", "TrainHook", "top1_accuracy", "hypersearch",
           "SearchResult", "train_architecture", "DEFAULT_LR", "DEFAULT_WEIGHT_DECAY"]
