"""Datasets: loading, checking, splitting and scaling, independent of the model."""

from digitcnn.core.errors import DataError
from digitcnn.data.dataset import Dataset, load_dataset

__all__ = ["DataError", "Dataset", "load_dataset"]
