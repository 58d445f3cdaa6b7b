"""Lightning callbacks for cross-cutting concerns: reconstruction metrics, image grids, prediction files."""
from callbacks.images import ImageLogger
from callbacks.predictions import PredictionWriter, read_predictions
from callbacks.reconstruction import ReconstructionMetrics

__all__ = ["ReconstructionMetrics", "ImageLogger", "PredictionWriter", "read_predictions"]
