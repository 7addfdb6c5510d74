# The spintrail image: `spintrail serve` on 0.0.0.0:8080 as uid 10001, authentication on, everything it keeps
# under /var/lib/spintrail (the one writable volume; the root filesystem can be read-only).
#
#   podman build --format docker -t spintrail .            # docker build -t spintrail . works the same
#   podman run -d -p 8080:8080 -v spintrail-data:/var/lib/spintrail \
#     -e SPINTRAIL_ADMIN_TOKEN=... -e SPINTRAIL_INGEST_TOKENS=echo=... --read-only spintrail
#
# BASE_IMAGE is any Debian 12 (bookworm) image: python3 comes from its packages, so the Python of both
# stages is the same. Building where no registry is reachable: make one with debootstrap (docs/deploy.md).
# A build behind a TLS-intercepting proxy can hand pip the proxy's CA bundle as the build secret `pip_ca`
# (`--secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt`); it is used by the pip step only and is
# not in any layer of the image.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY src /src/src
# Build spintrail's wheel, then install it and its dependencies (all published as binary wheels, so no
# compiler is needed) into /opt/spintrail, which is all the runtime stage takes from here.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels /src \
 && python3 -m venv /opt/spintrail \
 && /opt/spintrail/bin/pip install --only-binary=:all: /wheels/spintrail-*.whl \
 && /opt/spintrail/bin/pip uninstall -y setuptools pip \
 && /opt/spintrail/bin/spintrail --help >/dev/null

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="spintrail" \
      org.opencontainers.image.description="The audit trail for Spinnaker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 10001 spintrail \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/spintrail --no-create-home \
      --shell /usr/sbin/nologin spintrail \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/spintrail
COPY --from=build /opt/spintrail /opt/spintrail
COPY deploy/container/healthcheck.py /opt/spintrail/healthcheck.py
ENV PATH=/opt/spintrail/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPINTRAIL_HOST=0.0.0.0 \
    SPINTRAIL_PORT=8080 \
    SPINTRAIL_AUTH=on \
    SPINTRAIL_DATABASE=/var/lib/spintrail/spintrail.db \
    SPINTRAIL_SIGNER_STATE_DIR=/var/lib/spintrail/signer \
    SPINTRAIL_CHECKPOINT_DIR=/var/lib/spintrail/checkpoints
WORKDIR /var/lib/spintrail
VOLUME ["/var/lib/spintrail"]
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/spintrail/bin/python", "/opt/spintrail/healthcheck.py"]
ENTRYPOINT ["spintrail"]
CMD ["serve"]
