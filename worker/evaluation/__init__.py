"""Accuracy measurement on labelled face datasets (LFW pairs, open-set identification)."""
