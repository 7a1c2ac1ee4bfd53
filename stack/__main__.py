"""`python -m stack up|down|status|restart [api-N ...]`: surge as local processes, for machines
without Docker (stack/launcher.py has the details).

up       Postgres and Redis (in RUN/, unless SURGE_DATABASE_URL / SURGE_REDIS_URL point
         elsewhere), the seeder, SURGE_REPLICAS API replicas on Granian, nginx in front of them
         on SURGE_HTTP_PORT (8080), Prometheus on SURGE_PROMETHEUS_PORT (9090) with the node,
         nginx, redis and postgres exporters. Waits until each answers; prints the URLs. Safe to
         repeat: what runs is kept, what is missing is started, nginx is reloaded when its
         replicas or knobs (SURGE_RATE_LIMIT, ...) changed.
down     Stops exactly what `up` started (its pid files, each checked against the live process,
         and each process group swept), entry first: nginx, monitoring, replicas, stores.
status   What runs, where, and whether it answers.
restart  Rolling, graceful restart of the named replicas (default: all): each is taken out of
         nginx, finishes its in-flight requests, starts again, and is put back once ready.

RUN is SURGE_RUN_DIR (default ./.run): data, logs/ (one log per process), pids/.
"""

from __future__ import annotations

import sys

from stack.launcher import Stack, say
from stack.nginx import NginxError
from stack.servers import ServerError

USAGE = "usage: python -m stack up|down|status|restart [api-N ...]"
UP_FAILED = "what did start is still running: `make status` shows it, `make down` stops it"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("up", "down", "status", "restart"):
        print(USAGE, file=sys.stderr)
        return 2
    command, names = args[0], args[1:]
    if names and command != "restart":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        stack = Stack()
        if command == "up":
            return stack.up()
        if command == "down":
            return stack.down()
        if command == "status":
            return stack.status()
        return stack.restart(names)
    except (ServerError, NginxError) as e:
        say(f"error: {e}")
        if command == "up":
            say(UP_FAILED)
        return 1
    except KeyboardInterrupt:
        say("interrupted; `make down` stops whatever was started")
        return 130
    except Exception:
        if command == "up":
            say(UP_FAILED)
        raise


if __name__ == "__main__":
    sys.exit(main())
