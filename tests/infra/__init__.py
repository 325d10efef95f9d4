"""Real components for tests: a Kafka-compatible broker, an RTSP server, Prometheus, test videos.

Each component is a context manager that starts the real process on a free loopback port,
waits until it really answers, and stops it cleanly. Nothing here is a mock.
"""
