"""Self-supervised pretraining: augmentations, methods and the trainer."""
