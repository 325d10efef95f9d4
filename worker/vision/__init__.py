"""Pixels to faces: image decoding, detection, landmarks and alignment."""
