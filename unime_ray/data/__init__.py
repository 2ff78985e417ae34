"""Corpus formats, readers and validation: what the mining job reads."""
