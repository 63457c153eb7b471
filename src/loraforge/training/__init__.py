"""Training: the loop, losses, optimizers, checkpoints."""
