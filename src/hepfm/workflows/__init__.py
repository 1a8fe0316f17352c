"""The workflows behind the CLI: train / evaluate, pretrain, finetune, embed.

Each is a short function over one spine: a typed run configuration (``configs.sections`` and
``training.config``), one data entry point (:mod:`hepfm.workflows.data`), a run directory that is
locked, provenance-recorded and resumable (:mod:`hepfm.workflows.provenance`), and the one training
engine. Workflows import only downward (models, objectives, data, training); studies build on them.
"""
