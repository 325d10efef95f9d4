"""Where frames come from: video files, RTSP cameras, and the Kafka frames topic."""
