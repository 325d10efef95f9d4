"""The `facewatch` command line."""
