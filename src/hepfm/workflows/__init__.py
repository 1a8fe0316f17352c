"""End-to-end workflows behind the CLI: train/evaluate now; pretrain/finetune/studies build on them."""
