"""Global retrieval with FAISS: index kinds, sharded index actors, exact top-k merging."""
