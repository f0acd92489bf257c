# syntax=docker/dockerfile:1
# certpager: one image for both services; the command chooses which one runs.
#   docker run ... IMAGE exporter --config.file /etc/certpager/exporter.yml
#   docker run ... IMAGE bridge --config.file /etc/certpager/bridge.yml
# The build stage installs certpager and its dependencies (binary wheels only) into a virtualenv; the final
# stage gets that virtualenv and nothing else: no compiler, no pip, no build cache.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY certpager ./certpager
COPY exporter ./exporter
COPY bridge ./bridge
# --only-binary: every dependency ships manylinux wheels; a source build would need a compiler here and
# would be a different artifact than the one tested. pip itself is removed from the virtualenv afterwards.
RUN python -m venv /opt/certpager \
    && /opt/certpager/bin/pip install --only-binary=:all: --no-binary=certpager . \
    && /opt/certpager/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
# Set by the release build (docs/deploy.md): docker build --build-arg VERSION=... --build-arg REVISION=$(git rev-parse HEAD)
#   --build-arg SOURCE=<repository URL>
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="certpager" \
      org.opencontainers.image.description="TLS certificate expiry exporter and Alertmanager-to-PagerDuty bridge" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}"
# The system pip and setuptools are build tools too: the running services never install anything.
RUN python -m pip uninstall --yes pip setuptools wheel \
    && useradd --system --uid 65532 --user-group --no-create-home --home-dir /var/lib/certpager \
       --shell /usr/sbin/nologin certpager \
    && mkdir -p /var/lib/certpager /etc/certpager \
    && chown 65532:65532 /var/lib/certpager
COPY --from=build /opt/certpager /opt/certpager
COPY deploy/exporter/certpager-exporter.yml /etc/certpager/exporter.yml
COPY deploy/bridge/certpager-bridge.yml /etc/certpager/bridge.yml
COPY deploy/docker/healthcheck.py /usr/local/bin/certpager-healthcheck
# Bytecode was compiled at install time; the root filesystem may be read-only.
ENV PATH=/opt/certpager/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
# The bridge's SQLite store (store.path, relative) lands here: mount a volume on it.
WORKDIR /var/lib/certpager
VOLUME ["/var/lib/certpager"]
# 9879: exporter, 9880: bridge (their default listen addresses).
EXPOSE 9879 9880
# /-/healthy of whichever service runs; CERTPAGER_HEALTHCHECK_URL overrides (another port, TLS).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["certpager-healthcheck"]
ENTRYPOINT ["certpager"]
CMD ["exporter", "--config.file", "/etc/certpager/exporter.yml"]
