"""Benchmarks: each compares facewatch with a peer in the same run and returns rows for a table."""
