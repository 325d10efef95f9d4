"""Runtime helpers shared by every layer above: torch device, dtype and threads, the heap, backoff."""
