# certpager: one image for both services; choose with the command:
#   docker run ... certpager exporter --config.file /etc/certpager/exporter.yml
#   docker run ... certpager bridge --config.file /etc/certpager/bridge.yml
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY certpager ./certpager
COPY exporter ./exporter
COPY bridge ./bridge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin certpager \
    && mkdir -p /var/lib/certpager && chown certpager /var/lib/certpager
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/exporter/certpager-exporter.yml /etc/certpager/exporter.yml
COPY deploy/bridge/certpager-bridge.yml /etc/certpager/bridge.yml
USER 65532
WORKDIR /var/lib/certpager
# 9879: exporter, 9880: bridge (DESIGN.md section 2).
EXPOSE 9879 9880
ENTRYPOINT ["certpager"]
CMD ["exporter", "--config.file", "/etc/certpager/exporter.yml"]
