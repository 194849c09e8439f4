"""Calibration data for the data-driven importance methods (and optimize's accuracy checks).

XAI criteria need a few hundred samples, nothing more, so the formats are
deliberately plain:
* a ``.npz`` with ``x`` (N, ...) and optionally ``y`` (N integer labels); instead of
  ``x`` the array may be named like the model's input, and a model with several inputs
  needs one array per input, named like the inputs;
* an image folder with one subfolder per class (sorted subfolder names give the
  label indices, as torchvision's ImageFolder does, so labels agree with models
  trained that way), or a flat folder of images (no labels).
Without labels the XAI methods attribute the model's own top-1 class. Subsampling
uses a fixed seed so that the same command gives the same scores; an image folder
decodes only the images of the subset.

Everything a user can get wrong is refused here in one line before any model work:
non-numeric or complex arrays, NaN/infinite samples, labels that are not
non-negative integers (a float label of 1e20 is not a class), image options that
do not parse, and data that would not fit in memory.

Modules: `dataset` (Dataset, validation, memory bound), `npz`, `images` (image
folders and their preprocessing options), `loader` (load_data: dispatch a path),
`model_data` (load_for_model: options defaulted from the model's inputs; what
importance, optimize and the benchmark tools call),
`fashion_mnist` (the example model's data).
"""
from graphprune.data.dataset import (MAX_LABEL, MEMORY_FRACTION, Dataset, as_dataset, check_dataset, check_memory,
                                     subset_indices)
from graphprune.data.fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_MEAN,
                                           FASHION_MNIST_STD, load_fashion_mnist)
from graphprune.data.images import ImageOptions, load_image_folder
from graphprune.data.loader import load_data
from graphprune.data.model_data import IMAGE_OPTIONS, load_for_model, model_inputs
from graphprune.data.npz import load_npz

__all__ = ["load_for_model", "model_inputs", "IMAGE_OPTIONS",
           "Dataset", "as_dataset", "check_dataset", "check_memory", "subset_indices", "load_data", "load_npz",
           "load_image_folder", "ImageOptions", "load_fashion_mnist", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR",
           "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "MAX_LABEL", "MEMORY_FRACTION"]
