"""FIX-CLIP fine-tuning: the run's config (the `train:` params section), data stream, loop, checkpoints, DDP, export."""
