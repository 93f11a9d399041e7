"""Kafka adapters: client configuration (``config``, the one place settings become options for
librdkafka or aiokafka), producers, the group consumer, delivery with its disk spool, topics."""
