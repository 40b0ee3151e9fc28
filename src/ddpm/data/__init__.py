"""Training data: the bundled digits, image folders, CIFAR-10 and MNIST, as uint8 image datasets.

>>> from ddpm.config import DataConfig
>>> from ddpm.data import load_dataset
>>> ds = load_dataset(DataConfig(source="digits", resolution=28, channels=1, class_labels=True))
>>> len(ds), ds.images.shape, ds.num_classes
(4500, torch.Size([4500, 1, 28, 28]), 10)
"""

from ddpm.data.dataset import ImageDataset
from ddpm.data.load import SOURCES, SPLITS, load_dataset, load_tensor

__all__ = ["ImageDataset", "load_dataset", "load_tensor", "SOURCES", "SPLITS"]
