# effadam: the parameter server and the worker in one image, and a second
# image (target pytorch) with the Python package and Debian's PyTorch.
#
#   podman build --format docker -t effadam:dev .      (or: docker build -t effadam:dev .)
#   docker run --rm effadam:dev                         # effadam-server, see --helpfull
#   docker run --rm --entrypoint effadam-worker effadam:dev --server=HOST:50051
#   podman build --format docker --target pytorch -t effadam-pytorch:dev .
#   docker run --rm -e EFFADAM_SERVER=HOST:50051 -e RANK=0 effadam-pytorch:dev
#       (examples/fashion_mnist_cnn.py; its flags follow)
#
# Base images are referred to by their full name (docker.io/library/...), so
# podman and docker resolve the same image.
#
# Stages: "build" compiles the two daemons and the pybind11 module with
# Debian's toolchain and libraries, once;
# "runtime-base" holds only the shared libraries the binaries actually link
# (computed with ldd, so a new dependency cannot be forgotten), the binaries,
# the Fashion-MNIST data set the built-in models read, the effadam user, and
# effadam-health, the small grpc.health.v1 client HEALTHCHECK runs (Debian
# ships no grpc_health_probe). "pytorch" adds Python, Debian's torch and the
# effadam package to it; the last stage, the default, is the server image.

# ----------------------------------------------------------- build stages
# build-deps is a stage of its own so that a CI cache can tag it and keep
# the slow apt-get layer across source changes.
FROM docker.io/library/debian:bookworm AS build-deps

# The same build dependencies as scripts/setup.sh (GTest is required by the
# top-level CMakeLists.txt even though no test is built here).
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      libabsl-dev libeigen3-dev zlib1g-dev libxxhash-dev \
      libgtest-dev libgmock-dev libbenchmark-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libssl-dev prometheus-cpp-dev python3-dev pybind11-dev \
 && rm -rf /var/lib/apt/lists/*

FROM build-deps AS build
WORKDIR /src
COPY . .
# The context has no .git: --version and effadam_build_info show this
# revision (docker build --build-arg EFFADAM_GIT_REVISION=$(git rev-parse
# --short=12 HEAD) ...), "unknown" without it.
ARG EFFADAM_GIT_REVISION=unknown
# One compilation for both images: the Python module needs position-
# independent code, so everything is built that way once.
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DEFFADAM_BUILD_BENCH=OFF \
      -DEFFADAM_BUILD_PYTHON=ON -DEFFADAM_GIT_REVISION="$EFFADAM_GIT_REVISION" \
 && cmake --build /build -j "$(nproc)" \
      --target effadam-server effadam-worker effadam-health effadam_python \
 && install -d /out/bin /out/python \
 && install -m 0755 -s /build/bin/effadam-server /build/bin/effadam-worker \
      /build/bin/effadam-health /out/bin/ \
 && cp -r /build/python/effadam /out/python/ \
 && strip --strip-unneeded /out/python/effadam/*.so

# The Debian packages that own the shared libraries the binaries load: the
# runtime stage installs exactly these (plus the data set).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN ldd /out/bin/* \
      | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u \
      | while read -r lib; do \
          real="$(readlink -f "$lib")"; \
          dpkg -S "$lib" 2>/dev/null || dpkg -S "$real" 2>/dev/null \
            || dpkg -S "/usr$lib" 2>/dev/null || dpkg -S "/usr$real"; \
        done \
      | cut -d: -f1 | sort -u > /out/runtime-packages \
 && test -s /out/runtime-packages \
 && cat /out/runtime-packages

# -------------------------------------------------------------- runtime stages
FROM docker.io/library/debian:bookworm AS runtime-base

COPY --from=build /out/runtime-packages /tmp/runtime-packages
# dataset-fashion-mnist: /usr/share/datasets/fashion-mnist, the default
# --data_dir of the worker's logreg and mlp models (~30 MB).
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      $(cat /tmp/runtime-packages) dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages

COPY --from=build /out/bin/ /usr/local/bin/

# Unprivileged user with a fixed uid, so volume ownership is predictable;
# /var/lib/effadam (the data volume: the run summary) is owned by it so a
# fresh named volume mounted there is writable. --version proves each
# binary finds all its shared libraries.
RUN groupadd --system --gid 10001 effadam \
 && useradd --system --uid 10001 --gid effadam --home-dir /var/lib/effadam \
      --shell /usr/sbin/nologin effadam \
 && install -d -o effadam -g effadam -m 0750 /var/lib/effadam \
 && effadam-server --version && effadam-worker --version && effadam-health --version

WORKDIR /var/lib/effadam

# ------------------------------------------------------------ pytorch image
# A PyTorch worker: Debian's python3-torch (CPU) with OpenBLAS (without
# libopenblas0-pthread torch falls back to the reference BLAS, 6.5x slower
# forward and backward), the effadam package (its module links the same
# libraries as effadam-worker, all in the base; the import below proves
# it), the examples, and effadam-server for `python3 -m effadam.run`.
FROM runtime-base AS pytorch
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-numpy python3-torch libopenblas0-pthread \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/python/effadam /usr/local/lib/python3.11/dist-packages/effadam
COPY examples/ /opt/effadam/examples/
RUN python3 -c "import effadam, effadam.optim, effadam.run; print('effadam', effadam.__file__)"
# No bytecode files on a read-only root file system; torch's caches in /tmp.
ENV PYTHONDONTWRITEBYTECODE=1 HOME=/tmp EFFADAM_SERVER_BIN=/usr/local/bin/effadam-server
USER effadam:effadam
# 9465: the worker's Prometheus metrics (--metrics_listen).
EXPOSE 9465
# Where the server is and the rank: EFFADAM_SERVER (or MASTER_ADDR) and
# RANK (or JOB_COMPLETION_INDEX) in the environment, or the flags.
ENTRYPOINT ["python3", "/opt/effadam/examples/fashion_mnist_cnn.py"]

# ------------------------------------------------------- server image (default)
FROM runtime-base AS server
USER effadam:effadam

# 50051: gRPC (effadam.v1.ParameterServer, grpc.health.v1, reflection).
# 9464: Prometheus metrics of the server (--metrics_listen); workers use 9465.
EXPOSE 50051 9464 9465

# Checks the server's grpc.health.v1 status; a container started as a worker
# should disable it (deploy/docker-compose.yml does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["effadam-health", "--addr=127.0.0.1:50051"]

# The server by default; its flags follow (docker run IMAGE --workers=8 ...).
# Run a worker with --entrypoint effadam-worker.
ENTRYPOINT ["effadam-server"]
CMD ["--listen=0.0.0.0:50051"]
