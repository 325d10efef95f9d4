"""The watchlist: identities, their templates, the FAISS index over them and identification."""
