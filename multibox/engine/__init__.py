"""Training engine: the loop, checkpoints, resume."""
