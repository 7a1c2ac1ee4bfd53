"""When a streaming standby can serve what the primary holds, asked the same way by the seeder
(before it switches Redis to a new version) and by the API (before its fallback reads go back
to the standby): read the primary's WAL position, then ask the standby whether it has replayed
that far.

The primary's position is where its WAL is written up to, so it covers every transaction
committed with synchronous_commit on (the default; the seeder sets it for its own sessions):
an asynchronous commit may still sit in memory for up to wal_writer_delay.
"""

PRIMARY_WAL_POSITION = "SELECT pg_current_wal_lsn()::text"

# A server that is not in recovery (a promoted standby, the primary itself) holds everything.
STANDBY_REPLAYED = (
    "SELECT pg_last_wal_replay_lsn()::text,"
    " NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= %s::pg_lsn"
)
