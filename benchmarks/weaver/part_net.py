"""weaver-core network config: weaver's own ParticleTransformer, sized by ``--network-option``.

Used by benchmarks/side_by_side_part.py to train the reference with weaver's own training loop.
The defaults are the ParT paper's top-tagging config (linear head, no class-block dropout, GELU on
the pair bias); ``size=small`` gives the same shape as hepfm's ``part-small`` preset.
"""

import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer

SIZES = {
    "paper": {},
    "small": {
        "embed_dims": [32, 64, 32],
        "pair_embed_dims": [16, 16],
        "num_heads": 4,
        "num_layers": 2,
        "num_cls_layers": 1,
    },
}


class ParTWrapper(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.mod = ParticleTransformer(**kwargs)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"mod.cls_token"}

    def forward(self, points, features, lorentz_vectors, mask):
        return self.mod(features, v=lorentz_vectors, mask=mask)


def get_model(data_config, size="paper", **kwargs):
    cfg = {
        "input_dim": len(data_config.input_dicts["pf_features"]),
        "num_classes": len(data_config.label_value),
        "pair_input_dim": 4,
        "use_pre_activation_pair": False,
        "cls_block_params": {"dropout": 0, "attn_dropout": 0, "activation_dropout": 0},
        "fc_params": [],
    }
    cfg.update(SIZES[size])
    cfg.update(kwargs)
    model = ParTWrapper(**cfg)
    info = {
        "input_names": list(data_config.input_names),
        "input_shapes": {k: (1, *s[1:]) for k, s in data_config.input_shapes.items()},
        "output_names": ["softmax"],
        "dynamic_axes": {
            **{k: {0: "N", 2: "n_" + k.split("_")[0]} for k in data_config.input_names},
            "softmax": {0: "N"},
        },
    }
    return model, info


def get_loss(data_config, **kwargs):
    return torch.nn.CrossEntropyLoss()
