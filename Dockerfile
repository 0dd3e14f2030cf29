# bnaas images. Targets:
#   cpu  (default)  the service with bncore's C kernels
#   cuda            the same plus CuPy and the CUDA 12 runtime libraries from PyPI
#                   (run with a GPU: `docker run --gpus all`, NVIDIA container toolkit on the host)
# BASE_IMAGE is any Debian-like image with python3 >= 3.11 (and venv): the official slim image by
# default; CI, which reaches no registry, passes a debootstrap-made local/debian:bookworm.
# Nothing below assumes /usr/local/bin/python: everything goes through the venv in /opt/bnaas.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# A C compiler for bncore's kernels; Debian's python3 needs its headers (the official image
# ships them). tini (static) is copied into the runtime image as PID 1.
RUN set -eux; \
    pkgs="gcc libc6-dev tini"; \
    python3 -c "import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))" \
      || pkgs="$pkgs python3-dev"; \
    apt-get update; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/bnaas
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a code change reuses this layer. EXTRAS are
# pyproject extras the service needs at run time (redis: the Redis store).
ARG EXTRAS="redis"
COPY pyproject.toml ./
RUN EXTRAS="$EXTRAS" python3 -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = p.get('optional-dependencies', {}); print('\n'.join(p['dependencies'] + [d for e in os.environ['EXTRAS'].split() for d in extras.get(e, [])]))" \
      > /tmp/requirements.txt \
    && /opt/bnaas/bin/pip install -r /tmp/requirements.txt
COPY setup.py README.md ./
COPY bncore ./bncore
COPY service ./service
# The C extension is optional for a source install; here its absence is a build failure.
RUN /opt/bnaas/bin/pip install --no-deps . \
    && cd / && /opt/bnaas/bin/python3 -c "import bncore._cpu" \
    && find /opt/bnaas -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE_IMAGE} AS cpu-runtime
ENV PATH=/opt/bnaas/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BNAAS_HOST=0.0.0.0 \
    BNAAS_PORT=8000 \
    BNAAS_STORE=sqlite:////data/bnaas.db
# The venv's python3 links to the base image's interpreter: same BASE_IMAGE, same path.
COPY --from=build /opt/bnaas /opt/bnaas
COPY --from=build /usr/bin/tini-static /usr/bin/tini
RUN groupadd --system --gid 10001 bnaas \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home bnaas \
    && mkdir -p /data && chown 10001:10001 /data
VOLUME /data
EXPOSE 8000
# Readiness, not liveness: a replica whose store is unreachable leaves the load balancer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('BNAAS_PORT', '8000'), timeout=2).status != 200)"]
USER 10001:10001
# The server handles SIGTERM (uvicorn: drain, then exit 0). tini as PID 1 passes signals on and
# reaps children; without it, a SIGTERM that arrives while Python is still importing (seconds on
# a busy host) is dropped, since PID 1 ignores signals it has no handler for, and `docker stop`
# waits out its whole grace period. uvicorn re-raises SIGTERM once drained: -e 143 makes that
# clean stop exit 0.
ENTRYPOINT ["/usr/bin/tini", "-e", "143", "--"]
CMD ["bnaas", "serve"]

# CUDA libraries in their own stage, which depends on no project file: a code change does not
# download them again (the legacy builder, Debian's docker 20.10 and compose v1, builds every
# stage before the target, so the cpu target builds this one too; BuildKit skips it).
# CUDA 12 libraries run on any driver >= 525 (CUDA 13 ones need >= 580). Only what bncore uses:
# the runtime, NVRTC (CuPy compiles its kernels at run time) and cuBLAS (einsum), ~1 GB less
# than cupy's [ctk] extra.
FROM ${BASE_IMAGE} AS cuda-libs
ARG CUDA_PACKAGES="cupy-cuda12x>=13 cuda-toolkit[cudart,nvrtc,cublas]>=12,<13"
# Installed straight into the path the venv's site-packages will have (same base image, same
# Python), so the cuda stage merges them with one COPY and CuPy finds the NVIDIA libraries
# where it looks: in site-packages. The venv's numpy stays the one in use.
RUN set -eux; \
    site="/opt/bnaas/lib/$(python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])')/site-packages"; \
    python3 -m venv /tmp/pip; \
    PIP_NO_CACHE_DIR=1 /tmp/pip/bin/pip install --disable-pip-version-check --target "$site" \
      $CUDA_PACKAGES; \
    rm -rf /tmp/pip "$site"/numpy "$site"/numpy-* "$site"/numpy.libs "$site"/bin; \
    find "$site" -name '__pycache__' -prune -exec rm -rf {} +

# The cuda target comes before cpu so that cpu, the last stage, is the default target.
FROM cpu-runtime AS cuda
COPY --from=cuda-libs /opt/bnaas /opt/bnaas
# NVRTC loads without a GPU: the build proves that CuPy finds the libraries it got from PyPI.
RUN python3 -c "import cupy; from cupy_backends.cuda.libs import nvrtc; print('cupy', cupy.__version__, 'nvrtc', nvrtc.getVersion())"
USER 10001:10001
ENV BNAAS_DEVICE=cuda

FROM cpu-runtime AS cpu
