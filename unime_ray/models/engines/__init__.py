"""Scoring engines (vLLM, transformers): yes/no scores and short generations, shared by the
judge and the reranker."""
