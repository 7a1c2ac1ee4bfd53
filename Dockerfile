# The surge images, from one Dockerfile (`docker compose build` builds both):
#   api     (the default: the last stage) Granian serving api.app:create_app: core and api only,
#           none of the seeder's generators (faker) or progress bars (rich)
#   seeder  `surge-seed`: the one-shot job and the redis-keeper in compose.yaml
FROM python:3.11.13-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes, not on every
# code change. [project].dependencies holds exact pins (it is the lock); every one of them ships
# wheels for linux amd64/arm64, so no compiler is needed.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Never root at run time. No secrets here: database and Redis URLs come from the environment.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin surge

FROM base AS seeder
# The seeder's own pins (the `seeder` extra), then the package with core, the seeder and the
# surge-seed script.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['seeder']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY core ./core
COPY seeder ./seeder
RUN pip install --no-deps . && rm -rf build ./*.egg-info
USER 10001:10001
CMD ["surge-seed"]

FROM base AS api
# The code as it is, imported from /app: installing the package here would also install a
# surge-seed script whose seeder this image does not have.
COPY core ./core
COPY api ./api
ENV PYTHONPATH=/app
USER 10001:10001

EXPOSE 8000
# One Granian worker per container: replicas are containers (compose deploy.replicas), and nginx
# spreads connections across them with least_conn (Granian's own multi-worker spread is uneven).
CMD ["granian", "--interface", "asgi", "--factory", "api.app:create_app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1", "--loop", "uvloop", "--no-ws"]
