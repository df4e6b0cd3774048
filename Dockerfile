# syntax=docker/dockerfile:1
# nqexp CUDA image for A100/H100 nodes: the same image runs the CLI, the Ray head and the Ray GPU
# workers (infra/README.md: build, push, launch, submit).
#
#   docker build -t nqexp:cu130 .
#   docker run --rm --gpus all nqexp:cu130 doctor          # GPU, bf16, Ray and W&B modes
#
# Why python:slim and not nvidia/cuda:*-runtime: the CUDA torch wheel brings its own CUDA runtime,
# cuBLAS and cuDNN as pip packages (nvidia-*-cu13), so a CUDA base image would ship them twice
# (+3 GB). Only the driver comes from the host (NVIDIA container toolkit / Kubernetes device
# plugin); CUDA 13 wheels need driver >= 580. For older drivers build with TORCH_CUDA=cu128 if
# https://download.pytorch.org/whl/torch/ lists torch-${TORCH_VERSION}+cu128.
#
# Pins. Python is the minor version the test suite runs on; Ray must be the same version (and the
# same Python minor) on the cluster and on any laptop that connects with ray://. torch is the CPU
# pin of the README's install line, here as its CUDA build. For byte-for-byte rebuilds, pin the base
# by digest: docker buildx imagetools inspect python:3.11.14-slim-bookworm.
ARG PYTHON_VERSION=3.11.14
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

# ------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu130
ARG RAY_VERSION=2.60.0
# The extras of the README's install line (`pip install -e ".[dev]" torch==2.13.0`): dev brings
# pytest, so `pytest -m gpu` runs inside the image (tests/ is copied below).
ARG NQEXP_EXTRAS=dev
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CUDA torch first, from PyTorch's index: the project's `torch>=2.2` is then already satisfied,
# and the second install can never swap in another build (docs/stack_notes.md §1).
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
        "torch==${TORCH_VERSION}+${TORCH_CUDA}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nqexp/ nqexp/
COPY sql/ sql/
# Non-editable, so the wheel's package data (nqexp.sql) is what runs. ray[default] adds the
# dashboard, the Jobs API (`ray job submit`, KubeRay RayJob) and the Ray Client server to the
# project's ray[tune]; boto3 lets the Ray autoscaler on the head start EC2 workers
# (infra/ray-cluster-aws.yaml). The torch pin is repeated so the resolver keeps the CUDA build (PyPI has no +cu130,
# so a resolver that wanted another torch would fail loudly instead of swapping builds).
# DL3013 (pin versions): `.` is the project itself, whose dependencies are the ranges pyproject.toml
# declares (the project has no lock file); torch and Ray, which must match across nodes, are pinned.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir \
        ".[${NQEXP_EXTRAS}]" \
        "ray[default,tune]==${RAY_VERSION}" \
        "boto3>=1.34" \
        "torch==${TORCH_VERSION}+${TORCH_CUDA}" \
 && pip check

# ------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# openssh-client and rsync: the Ray cluster launcher's head syncs files into containers with
# `rsync -e 'docker exec -i'` and reaches workers over SSH. tini reaps Ray's child processes.
# No compilers: every Python package arrives as a wheel in the build stage.
# DL3008 (pin apt versions): Debian's security updates replace exact versions, so pins break
# rebuilds; the base image tag pins the distribution release instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client rsync tini \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 1000 nqexp \
 && useradd --uid 1000 --gid nqexp --create-home --shell /bin/bash nqexp
COPY --from=build /opt/venv /opt/venv
# Login shells (`docker exec … bash --login` from the Ray launcher, KubeRay's `bash -lc`) reset PATH
# in /etc/profile; this puts the venv back so `ray` and `nqexp` are found there too.
# SC2016: the single quotes are deliberate; $PATH must expand at login, not at build time.
# hadolint ignore=SC2016
RUN printf 'export PATH=/opt/venv/bin:$PATH\n' > /etc/profile.d/nqexp-venv.sh
COPY --chmod=0755 infra/docker/entrypoint.sh /usr/local/bin/nqexp-entrypoint
WORKDIR /opt/nqexp
COPY --chown=nqexp:nqexp experiments/ experiments/
COPY --chown=nqexp:nqexp sql/ sql/
COPY --chown=nqexp:nqexp tests/ tests/
COPY --chown=nqexp:nqexp pyproject.toml README.md ./
RUN chown nqexp:nqexp /opt/nqexp
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RAY_USAGE_STATS_ENABLED=0 \
    WANDB_SILENT=true
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 1000:1000
# Fails when torch cannot see a GPU with bf16. A container started without GPUs (a laptop, CI)
# reports unhealthy, which is the truth for a trainer image; `nqexp doctor` prints the details.
HEALTHCHECK --interval=5m --timeout=60s --start-period=30s --retries=1 \
    CMD ["python", "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 1)"]
ENTRYPOINT ["tini", "--", "nqexp-entrypoint"]
CMD ["--help"]
