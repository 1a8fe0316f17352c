"""Torch physics kernels on padded four-vector batches: augmentations, subjet finding, ParT pair
features, and feature recomputation from (augmented) four-vectors.

They sit beside :mod:`hepfm.nn`, below :mod:`hepfm.models` and :mod:`hepfm.objectives`, which use
them on the training device; keeping them out of :mod:`hepfm.data` (readers, loaders) means models
and objectives never import the data layer for a kernel.
"""
