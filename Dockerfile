# The surge image: the API (default command: Granian serving api.app:create_app) and the seeder
# (`surge-seed`, the one-shot job in compose.yaml). Build: `docker compose build`.
FROM python:3.11.13-slim-bookworm

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

# Then the code: the package itself (core, api, seeder, their package data and the surge-seed script).
COPY core ./core
COPY api ./api
COPY seeder ./seeder
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# Never root at run time. No secrets here: database and Redis URLs come from the environment.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin surge
USER 10001:10001

EXPOSE 8000
# One Granian worker per container: replicas are containers (compose deploy.replicas), and nginx
# spreads connections across them with least_conn (Granian's own multi-worker spread is uneven).
CMD ["granian", "--interface", "asgi", "--factory", "api.app:create_app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1", "--loop", "uvloop", "--no-ws"]
