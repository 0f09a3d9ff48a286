# syntax=docker/dockerfile:1
#
# One image for every role: `paxos acceptor|proposer|learner` (and the client
# commands `paxos propose|get`). Build with `make image`.
#
# The builder stage runs the package build, which generates the gRPC code from
# proto/ (hatch-protobuf), so the image never depends on generated files from
# the build context. The runtime stage installs only the wheels: no compiler,
# no grpcio-tools, no source tree.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY roles ./roles
COPY paxos_service ./paxos_service
# Builds paxos-service (with paxos_service/v1/*_pb2*.py generated) and the
# wheels of all its runtime dependencies into /wheels.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot and the
# manifests can name the same ids in runAsUser/runAsGroup/fsGroup.
RUN groupadd --system --gid 10001 paxos \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin paxos \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/paxos
# Bind-mount the wheels instead of copying them, so they add no layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels paxos-service
USER 10001:10001
# The acceptor's and the learner's SQLite files live in /var/lib/paxos
# (created above, owned by the paxos user); Kubernetes mounts each pod's
# volume there.
EXPOSE 50051
ENTRYPOINT ["paxos"]
CMD ["--help"]
