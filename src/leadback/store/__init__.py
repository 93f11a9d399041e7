"""ClickHouse: the clickhouse-connect adapter (chdb:// or http://) and the schema migrations."""
