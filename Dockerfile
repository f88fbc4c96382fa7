# syntax=docker/dockerfile:1
# Nova image: multi-stage, slim Python, non-root, no build tools in the final stage, and
# fit for readOnlyRootFilesystem (no .pyc writes; /tmp and /var/lib/nova are volumes).
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/nova
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Every dependency ships manylinux wheels: no compiler needed, even here.
RUN /opt/nova/bin/pip install --no-compile . \
 && /opt/nova/bin/python -m compileall -q /opt/nova/lib

FROM python:3.11-slim-bookworm
# pg_dump/pg_restore for `nova backup` and `nova restore` on PostgreSQL. Debian bookworm ships
# version 15, which dumps servers up to 15; for a newer server install postgresql-client-NN
# from apt.postgresql.org here (nova backup refuses a pg_dump older than the server).
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 nova \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin nova \
 && install -d -o 10001 -g 10001 /var/lib/nova
COPY --from=build /opt/nova /opt/nova
ENV PATH=/opt/nova/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NOVA_DATA_DIR=/var/lib/nova \
    NOVA_HOST=0.0.0.0 \
    NOVA_PORT=3000
USER 10001:10001
WORKDIR /var/lib/nova
VOLUME ["/var/lib/nova"]
EXPOSE 3000
HEALTHCHECK NONE
ENTRYPOINT ["nova"]
CMD ["serve", "--host", "0.0.0.0"]
