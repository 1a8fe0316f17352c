"""Studies: experiment grids built from the workflows (pretrain -> finetune -> evaluate), with tables,
and the main job (``hepfm demo``), the few-label study at toy scale. Studies import workflows, never
the reverse."""
