"""The package version, in a module of its own.

Modules that record the tool version (reports, manifests, fused checkpoints, `--version`) read it
from here rather than from the package: `repdeploy/__init__.py` is the API facade and imports
nearly every module, so `from . import __version__` made each of them depend on all the others
(docs/architecture.md, "Layer order"). pyproject.toml states the same version for packaging.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
