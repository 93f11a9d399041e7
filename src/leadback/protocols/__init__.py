"""Wire formats -> canonical event: one module per protocol ingest accepts."""
