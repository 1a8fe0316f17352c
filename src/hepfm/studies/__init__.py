"""Studies: experiment grids built from the workflows (pretrain -> finetune -> evaluate), with tables."""
