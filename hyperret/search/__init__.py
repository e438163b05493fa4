"""The search path: presets, candidate spaces, the FAISS candidate stage, the graph walk, the exact rerank, results."""
