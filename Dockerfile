# computesdkd as a sidecar. Sandboxes are runc containers, so this container
# must run privileged (it creates namespaces, cgroups, overlay and loop mounts):
#   docker run --privileged -v /run/computesdk:/run/computesdk computesdk
FROM golang:1.22-bookworm AS agent
WORKDIR /src
COPY daemon/agent/ .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /computesdk-agent .

FROM debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv runc mmdebstrap e2fsprogs util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/computesdk
COPY daemon/ daemon/
COPY clients/ clients/
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir \
      ./clients/python-api ./clients/python ./daemon
COPY --from=agent /computesdk-agent /opt/computesdk/computesdk-agent
ENV COMPUTESDK_AGENT=/opt/computesdk/computesdk-agent PATH=/opt/venv/bin:$PATH
# The base root filesystem is built on first start into a volume-friendly path.
VOLUME ["/var/lib/computesdk"]
ENTRYPOINT ["sh", "-c", "python -m computesdkd.providers.local.rootfs && exec computesdkd \"$@\"", "--"]
