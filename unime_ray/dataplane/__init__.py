"""Generic Ray Data plumbing: actor stages, tensor columns, the embedding stage."""
