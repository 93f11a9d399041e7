"""Audiences: rules as data, compiled to ClickHouse SQL, evaluated incrementally."""
