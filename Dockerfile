# computesdkd in a container. Build it with ./scripts/docker-image.sh, which
# needs no registry and no network inside the build: it makes the base image
# locally when there is none (mmdebstrap | docker import), builds the in-sandbox
# agent with the host's go and wheels of the daemon, the client and their
# dependencies with the host's pip, all into .docker-build/, and then runs
# `docker build --build-arg BASE=... .`. BASE may be any Debian bookworm image
# (debian:bookworm where one can be pulled); what it lacks of PACKAGES is
# installed with apt.
#
# Sandboxes are runc containers, so the container must run privileged (it makes
# namespaces, cgroups, overlay and loop mounts); see README "The container image":
#   docker run --privileged -v computesdk:/var/lib/computesdk \
#     -v /run/computesdk:/run/computesdk computesdk/computesdkd:local
ARG BASE=debian:bookworm
FROM ${BASE}
# What the daemon runs on the host side (scripts/setup.sh installs the same).
ARG PACKAGES="python3 python3-venv ca-certificates runc mmdebstrap e2fsprogs xfsprogs util-linux mount iproute2 nftables iptables"
RUN missing=$(for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done); \
    if [ -n "$missing" ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# A base from `docker import` has no PATH of its own, so this one is spelled out.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    COMPUTESDK_AGENT=/opt/computesdk/computesdk-agent \
    LANG=C.UTF-8
COPY scripts/docker-entrypoint.sh /usr/local/bin/computesdk-entrypoint
COPY .docker-build/computesdk-agent /opt/computesdk/computesdk-agent
COPY .docker-build/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir \
      --disable-pip-version-check -q computesdkd computesdk \
 && rm -rf /tmp/wheels
# The base root filesystem is built on the daemon's first start into this volume
# (images/), next to the daemon's state (state/).
VOLUME ["/var/lib/computesdk"]
ENTRYPOINT ["computesdk-entrypoint"]
CMD ["computesdkd"]
