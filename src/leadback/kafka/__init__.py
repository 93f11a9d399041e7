"""Kafka adapters: producer delivery, consumer helpers, topics, the disk spool."""
