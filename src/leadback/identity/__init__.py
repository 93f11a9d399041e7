"""Who a visitor is. :mod:`.contacts`: contact details in traits, hashed and encrypted at ingest."""
