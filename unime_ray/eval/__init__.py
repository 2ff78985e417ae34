"""Evaluation on the MMEB protocol."""
