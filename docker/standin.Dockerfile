# Offline stand-in for Flower's Ubuntu SuperNode image (flwr/supernode:1.39.0-py3.11-ubuntu24.04)
# on hosts without a registry: the same user (app, uid 49999), HOME and WORKDIR /app, and flwr in
# a venv at /python/venv, on a Debian bookworm root file system (Python 3.11) imported with
# `docker import`. Built by tests/test_docker_cluster.py; pip options come from PIP_* build args.
ARG ROOTFS=dualflower-standin/rootfs:bookworm
FROM ${ROOTFS}
ARG FLWR_VERSION=1.39.0
ARG PIP_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_NO_INDEX=
ENV PATH=/python/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/python/venv \
    LANG=C.UTF-8
RUN useradd --uid 49999 --user-group --home-dir /app --create-home --shell /bin/sh app \
    && python3 -m venv /python/venv \
    && /python/venv/bin/pip install --no-cache-dir "flwr==${FLWR_VERSION}" \
    && chown -R app:app /python /app
WORKDIR /app
USER app
ENV HOME=/app
ENTRYPOINT ["flower-supernode"]
