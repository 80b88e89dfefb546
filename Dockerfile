# syntax=docker/dockerfile:1
# One image for the four services (`sandmesh-gateway`, `sandmesh-scheduler`,
# `sandmesh-executor`, `sandmesh-browser-pool`) and the `sandmesh` CLI (migrations, admin).
# Pick the command at run time; with none, the image prints the CLI's help.
#
#   docker build -t sandmesh .
#   docker run --rm sandmesh                       # help
#   docker run --rm -e DATABASE_URL=... sandmesh sandmesh migrate up
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8

# The sandbox (bubblewrap; prlimit and setpriv from util-linux), Chromium for the browser pool,
# and the toolchains of services/executor/languages.toml, all from Debian. Sandboxed Python
# programs run on Debian's /usr/bin/python3, not on this image's /usr/local one. libc6-dev is
# what gcc/g++ only recommend; the man directory is where the JDK's postinst links its pages.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bubblewrap \
      util-linux \
      ca-certificates \
      chromium \
      fonts-liberation \
      python3 \
      nodejs \
      gcc \
      g++ \
      libc6-dev \
      golang-go \
      default-jdk-headless \
      php-cli \
      ruby \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN pip install . \
 && cd / \
 && rm -rf /src

# Non-root, with a numeric uid so Kubernetes' runAsNonRoot can check it. The executor then
# runs every sandbox as this uid (mapped to 65534 inside the sandbox's user namespace).
RUN groupadd --system --gid 10001 sandmesh \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/sandmesh --create-home \
      --shell /usr/sbin/nologin sandmesh
USER 10001:10001
WORKDIR /home/sandmesh

EXPOSE 50051 50052 50053 50054
CMD ["sandmesh", "--help"]
