"""What objectives on events (sets of reconstructed objects) share: the object type of every slot, read
from the ``objects`` features, and the seed's Lorentz augmentations with the inputs recomputed.

Why here: masked-object pretraining augments every training event (seed 003), and a classifier may be
asked to augment its labeled events the same way (``finetune.augment``); one implementation serves
both, so the two cannot drift apart (e.g. in keeping the MET transverse).
"""

from __future__ import annotations

import torch

from hepfm.contracts import ParticleBatch
from hepfm.data.features import FeatureSet
from hepfm.data.jets import OBJECT_TYPES
from hepfm.errors import HepfmInputError
from hepfm.physics.lorentz import LorentzConfig
from hepfm.physics.torch_features import compute_features


def type_columns(feature_set: FeatureSet, who: str) -> list[int]:
    """The columns of the one-hot object type (``obj_is_<type>``, in :data:`OBJECT_TYPES` order);
    ``who`` names what needs them in the one-line refusal of a feature set without them."""
    names = list(feature_set.names)
    missing = [f"obj_is_{t}" for t in OBJECT_TYPES if f"obj_is_{t}" not in names]
    if missing:
        raise HepfmInputError(
            f"{who} needs events with object types (feature set 'objects'); feature set "
            f"{feature_set.name!r} lacks {', '.join(missing)}")
    return [names.index(f"obj_is_{t}") for t in OBJECT_TYPES]


def object_types(batch: ParticleBatch, columns: list[int]) -> torch.Tensor:
    """(B, N) int64 index into OBJECT_TYPES of every slot (padding: whatever its zero row gives)."""
    return batch.x[..., columns].argmax(dim=-1)


class EventAugmentation:
    """``batch -> batch``: the Lorentz augmentations of :class:`~hepfm.physics.lorentz.LorentzConfig`
    on every event (the MET kept transverse), inputs recomputed from the new four-vectors; charge and
    type columns are kept, and so is the label. The jet vector is dropped (None): no event model reads it.
    """

    def __init__(self, config: LorentzConfig, feature_set: FeatureSet, who: str = "the Lorentz augmentation"
                 ) -> None:
        self.config = config
        self.feature_set = feature_set
        self.columns = type_columns(feature_set, who)

    def __call__(self, batch: ParticleBatch) -> ParticleBatch:
        met = object_types(batch, self.columns) == OBJECT_TYPES.index("met")
        with torch.autocast(device_type=batch.p4.device.type, enabled=False):
            p4 = self.config(batch.p4.float(), batch.mask, keep=met)
            x = compute_features(self.feature_set, p4, batch.mask, source_x=batch.x)
        return ParticleBatch(x=x, mask=batch.mask, p4=p4, jet=None, label=batch.label)
