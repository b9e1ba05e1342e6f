# Expie Gateway image: the gateway (default) and the simulator (`--entrypoint expie-sim`) for
# staging clusters. Runs as a numeric non-root user with a read-only root filesystem: it writes
# only under /var/lib/expie-gateway and /tmp, where the Helm chart mounts volumes.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the wheel, exactly as tests/e2e/test_image.py builds it ------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY simulator ./simulator
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# --- runtime: the wheel without test extras, nothing else -----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="expie-gateway" \
      org.opencontainers.image.description="Authenticated REST + WebSocket gateway in front of the Expie exchange API, with its simulator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary" \
      org.opencontainers.image.vendor="Expie Gateway"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/ /tmp/dist/
RUN python -m pip install --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && mkdir -p /var/lib/expie-gateway /etc/expie-gateway /etc/expie-sim \
    && chown 10001:10001 /var/lib/expie-gateway
COPY config/simulator.yaml /etc/expie-sim/simulator.yaml
USER 10001:10001
WORKDIR /var/lib/expie-gateway
EXPOSE 8080 8081
ENTRYPOINT ["expie-gateway"]
CMD ["serve", "--config", "/etc/expie-gateway/gateway.yaml"]
