"""The segmenter: consumes ``leadback.events.v1`` and writes events to ClickHouse exactly once."""
