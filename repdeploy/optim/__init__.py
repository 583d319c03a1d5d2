"""Optimizers for the models repdeploy deploys.

One gradient-multiplier mechanism (`MultiplierMap`) with two producers, the RepOptimizer
(multipliers from hyper-searched branch scales) and Spatial Gradient Scaling (multipliers from
feature statistics); optimizers that apply it (SGD to the gradient, AdamW and AGD to the update);
AGD; and the hyper-search that produces RepOpt scales files.
"""

from .agd import AGD, agd_init, prepare_for_agd
from .hypersearch import SearchResult, hypersearch
from .multipliers import AdamWWithMultipliers, MultiplierMap, SGDWithMultipliers
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
    "SpatialGradientScaling", "compute_sgs", "scaling_matrix", "hypersearch", "SearchResult",
    "load_scales", "save_scales", "scales_from_search_model", "set_repopt_multipliers", "repopt_initialize",
    "repopt_multiplier", "merged_kernel", "OPTIMIZERS",
]
