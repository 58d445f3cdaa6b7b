"""Image sources and the measurement-synthesising LightningDataModule (imports lightning/torchvision)."""
from datamodules.export import FORMAT, build_operator, export_measurements, load_measurements, validate_measurements
from datamodules.inverse_problem import InverseProblemDataModule, MeasurementDataset, operator_spec
from datamodules.sources import Digits, Ellipses, GaussianRandomField, ImageFolder, TorchvisionImages

__all__ = [
    "InverseProblemDataModule",
    "MeasurementDataset",
    "Ellipses",
    "GaussianRandomField",
    "Digits",
    "TorchvisionImages",
    "ImageFolder",
    "export_measurements",
    "load_measurements",
    "validate_measurements",
    "build_operator",
    "operator_spec",
    "FORMAT",
]
