"""The ingest service: HTTP in (pixel, JSON), canonical events out to Kafka."""
