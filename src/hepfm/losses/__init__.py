"""Loss functions as pure tensor functions, shared by objectives."""

from hepfm.losses.contrastive import alignment, nt_xent, positive_similarity, uniformity

__all__ = ["alignment", "nt_xent", "positive_similarity", "uniformity"]
