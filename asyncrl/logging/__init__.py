"""Logging: progress.csv, TensorBoard, live display, checkpoints, plots."""
