"""Training / evaluation loops, distributed helpers, checkpoints."""
