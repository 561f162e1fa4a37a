"""Datasets: loading, checking, splitting and scaling, independent of the model."""

from digitcnn.data.dataset import Dataset, load_dataset
from digitcnn.errors import DataError

__all__ = ["DataError", "Dataset", "load_dataset"]
