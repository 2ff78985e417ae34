"""Ray Serve: the two-stage retrieval service (embed -> FAISS search -> MLLM rerank)."""
