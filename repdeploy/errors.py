"""One exception hierarchy for repdeploy.

Library code raises these where a problem is detected, naming the offending input
and the fix. Only the CLI turns them into a one-line message and an exit code
(0 ok, 1 runtime error, 2 bad input or usage, 3 accuracy gate failed,
4 backend or hardware missing).
"""

from __future__ import annotations


class RepDeployError(Exception):
    """Base of every error repdeploy reports to a user."""

    exit_code = 1


class InputError(RepDeployError):
    """The user handed us something we cannot use; they must change the input."""

    exit_code = 2


class CheckpointError(InputError):
    """A checkpoint file is unreadable, foreign, truncated or does not match its architecture."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs arbitrary unpickling, which we refuse without an explicit opt-in."""


class NonFiniteWeightsError(CheckpointError):
    """NaN or Inf in the weights: a deployment built from them would be silently wrong."""


class DataError(InputError):
    """Calibration, evaluation or training data is missing, empty or malformed."""


class OutputError(InputError):
    """An output path cannot be written."""


class CalibrationError(InputError):
    """A calibration cache does not belong to the model it is applied to, or is malformed."""


class FusionError(RepDeployError):
    """The fused model does not compute the same function as the trained one."""


class ExportError(RepDeployError):
    """Export to ONNX (or an engine) failed its checks."""


class VerificationError(RepDeployError):
    """A numeric hand-off (fusion, ORT vs torch, INT8 vs fake-quant, TensorRT vs ORT) is outside its
    tolerance: the deployed model does not compute what was measured. Raised after every output is
    written, so the report shows what failed; `--allow-mismatch` records it instead."""


class AccuracyGateError(RepDeployError):
    """The quantized model lost more accuracy than the user allowed."""

    exit_code = 3


class BackendMissingError(RepDeployError):
    """An optional runtime (TensorRT) or the hardware it needs (an NVIDIA GPU) is absent."""

    exit_code = 4


class ToleranceError(VerificationError):
    """Two models' outputs differ by more than the tolerances the user allowed (`repdeploy compare`).

    A failed comparison is a failed verification (exit 1), as in `quantize` and `pipeline`; exit 3
    belongs to accuracy and fidelity gates (docs/cli.md)."""
