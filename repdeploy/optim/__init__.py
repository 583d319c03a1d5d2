"""Optimizers for the models repdeploy deploys.

One gradient-multiplier mechanism (`MultiplierMap`) with its producers: the RepOptimizer
(multipliers from hyper-searched branch scales), Spatial Gradient Scaling (multipliers from
feature statistics) and the QAT gradient priors (`priors`: branch scales from BN, SGS on a
fake-quant model); optimizers that apply it (SGD to the gradient, AdamW and AGD to the update);
AGD.

The hyper-search that produces RepOpt scales files runs the training loop, which sits above
this package: it is `repdeploy.training.hypersearch`.
"""

from .agd import AGD, agd_init, prepare_for_agd
from .multipliers import AdamWWithMultipliers, MultiplierMap, SGDWithMultipliers
from .priors import QuantSGSHook, branch_scales_from_bn, set_prior_multipliers
from .repopt import (
    load_scales,
    merged_kernel,
    repopt_initialize,
    repopt_multiplier,
    save_scales,
    scales_from_search_model,
    set_repopt_multipliers,
)
from .sgs import SpatialGradientScaling, compute_sgs, scaling_matrix

OPTIMIZERS = ("sgd", "adamw", "repopt-sgd", "repopt-adamw", "agd")

__all__ = [
    "MultiplierMap", "SGDWithMultipliers", "AdamWWithMultipliers", "AGD", "agd_init", "prepare_for_agd",
    "SpatialGradientScaling", "compute_sgs", "scaling_matrix",
    "load_scales", "save_scales", "scales_from_search_model", "set_repopt_multipliers", "repopt_initialize",
    "repopt_multiplier", "merged_kernel", "branch_scales_from_bn", "set_prior_multipliers", "QuantSGSHook",
    "OPTIMIZERS",
]
