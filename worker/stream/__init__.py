"""The streaming worker: sources -> frames -> faces -> tracks -> decisions -> events -> sinks."""
