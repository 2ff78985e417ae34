"""Training on Ray Train: the embedder (soft labels / InfoNCE) and, later, the reranker."""
