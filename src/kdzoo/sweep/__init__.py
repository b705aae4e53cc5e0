"""Sweeps: a grid x seeds over any recipe, on an Optuna study in an RDB storage."""
