"""surge API: Litestar replicas answering exam-result and booking lookups from Redis, backed by Postgres."""
