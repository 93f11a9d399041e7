"""Where messages go: one module per channel behind :class:`~leadback.destinations.base.Channel`."""
