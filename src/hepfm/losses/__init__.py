"""Loss functions as pure tensor functions, shared by objectives."""

from hepfm.losses.contrastive import alignment, mean_pairwise_cosine, nt_xent, positive_similarity, uniformity

__all__ = ["alignment", "mean_pairwise_cosine", "nt_xent", "positive_similarity", "uniformity"]
