"""surge API: Litestar replicas answering lookups from Redis, backed by Postgres."""
