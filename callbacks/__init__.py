"""Lightning callbacks for cross-cutting concerns: reconstruction metrics and image grids."""
from callbacks.images import ImageLogger
from callbacks.reconstruction import ReconstructionMetrics

__all__ = ["ReconstructionMetrics", "ImageLogger"]
