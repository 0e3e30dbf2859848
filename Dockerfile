# syntax=docker/dockerfile:1.7
#
# Two images from one file (build context: the repository root):
#
#   docker build --target operator -t ghcr.io/assay-dev/assay-operator:0.1.0 .
#   docker build --target runner   -t ghcr.io/assay-dev/assay-runner:0.1.0 .
#
# operator: slim Python with kopf and the Kubernetes client; no torch (about 150 MB).
# runner:   the same slim Python base plus torch and torchvision from PyPI. Their Linux x86_64 wheels
#           bundle the CUDA runtime, cuDNN and NCCL (the nvidia-* wheels), so a CUDA base image would
#           only duplicate them: the node needs just the NVIDIA driver and the device plugin (or the
#           container toolkit), which mount libcuda into the container. The image runs on CPU nodes too.
#
# Both run as uid/gid 1000 (the chart's and the operator's runAsUser), contain no compiler, and pin
# every version. For releases, pin the base by digest as well (python:3.11.11-slim-bookworm@sha256:...).
# The versions below are the ones the test suite runs with; bump them together with pyproject.toml.
#
# PYTHON_IMAGE swaps the base for a local image with the same layout (python and pip on PATH, bash,
# groupadd/useradd): scripts/build-images.sh builds one from Debian packages where no registry can be
# reached. The pip caches are cache mounts, so a changed pin downloads only what changed and no image
# holds a cache; the runner's dependencies are one layer, installed straight into /opt/venv, and assay
# itself is a small layer above it, so a code change rebuilds only that layer.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- wheel
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
RUN --mount=type=cache,id=assay-pip,target=/root/.cache/pip \
    pip install hatchling==1.27.0
COPY pyproject.toml README.md ./
COPY crds/ crds/
COPY runner/ runner/
COPY operator/ operator/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist .

# ------------------------------------------------------------------------------------- operator deps
FROM ${PYTHON_IMAGE} AS operator-venv
ENV PATH=/opt/venv/bin:$PATH
RUN --mount=type=cache,id=assay-pip,target=/root/.cache/pip \
    python -m venv /opt/venv && pip install \
      kopf==1.45.2 \
      kubernetes==37.0.1 \
      pydantic==2.14.3 \
      pydantic-settings==2.16.3 \
      PyYAML==6.0.3 \
      jsonschema==4.26.0 \
      click==8.5.1 \
      prometheus-client==0.26.0
COPY --from=wheel /dist/ /tmp/dist/
# The project itself without its dependencies: the operator never imports torch, numpy or pyarrow, and
# has no S3 client at all (boto3 is absent): it reads Kubernetes objects only, never a store.
RUN pip install --no-cache-dir --no-deps /tmp/dist/assay-0.1.0-py3-none-any.whl

# ------------------------------------------------------------------------------------------ operator
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="assay-operator" \
      org.opencontainers.image.description="assay's kopf operator for EvaluationJobs" \
      org.opencontainers.image.source="https://github.com/assay-dev/assay" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 assay && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp assay
COPY --from=operator-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 1000:1000
# 8080: kopf's /healthz (liveness, readiness); 8000: Prometheus /metrics.
EXPOSE 8080 8000
CMD ["python", "-m", "assay_operator"]

# -------------------------------------------------------------------------------------------- runner
# One stage, no venv stage to copy from: torch's CUDA wheels make /opt/venv about 6 GB, and a
# `COPY --from` would write all of it a second time.
FROM ${PYTHON_IMAGE} AS runner
RUN groupadd --gid 1000 assay && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp/home assay
ENV PATH=/opt/venv/bin:$PATH
# torch/torchvision from PyPI: CUDA 13 builds on linux/amd64 (CUDA libraries as nvidia-* wheels).
# This layer depends on these pins only; keep it above everything that changes with assay's code.
RUN --mount=type=cache,id=assay-pip,target=/root/.cache/pip \
    python -m venv /opt/venv && pip install \
      torch==2.15.0 \
      torchvision==0.29.2 \
      pycocotools==2.0.11 \
      faster-coco-eval==1.8.0 \
      pillow==13.0.0 \
      PyYAML==6.0.3 \
      boto3==1.44.5 \
      numpy==2.4.6 \
      pyarrow==26.0.1 \
      pydantic==2.14.3 \
      pydantic-settings==2.16.3 \
      jsonschema==4.26.0 \
      click==8.5.1 \
      safetensors==0.8.0
# assay itself. A COPY rather than a bind mount of the wheel stage: buildah (podman build) reuses a
# cached RUN whose bind-mounted stage has changed, and would keep the old assay.
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/assay-0.1.0-py3-none-any.whl && rm -r /tmp/dist
LABEL org.opencontainers.image.title="assay-runner" \
      org.opencontainers.image.description="assay's ppl/cmp worker: torch, torchvision and assay" \
      org.opencontainers.image.source="https://github.com/assay-dev/assay" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME and the caches match the operator's job pods (emptyDirs on /tmp and /var/cache/assay, read-only root).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp/home \
    XDG_CACHE_HOME=/var/cache/assay \
    TORCH_HOME=/var/cache/assay/torch \
    ASSAY_CACHE_DIR=/var/cache/assay \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:1000
WORKDIR /tmp
# The operator's Jobs set the command: python -m assay.runner ppl|cmp.
CMD ["assay", "--help"]
