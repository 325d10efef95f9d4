"""Aligned chips to embeddings: the torch face network, device choice and batching."""
