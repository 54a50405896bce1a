# layermask: one image for the gRPC service (`layermask serve`, the default) and for TorchServe
# (`layermask torchserve ...`). torch's CUDA wheels carry the CUDA runtime, so the same image runs
# on CPU nodes and on GPU nodes (which need the NVIDIA driver and the NVIDIA container toolkit).
# Build it with `make image`: it fills build/wheelhouse from deploy/image/requirements.lock and
# the project's own wheel; no index is reached from inside the build.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
COPY build/wheelhouse/ /wheels/
# Both onnxruntime (a dependency) and onnxruntime-gpu (the [gpu] extra) install the package
# `onnxruntime`; the GPU build is reinstalled last so that its files win (it has the CPU provider too).
# pip is removed from the final venv: nothing installs at run time.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels --require-hashes \
        -r /wheels/requirements.lock \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheels/layermask-*.whl \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --force-reinstall /wheels/onnxruntime_gpu-*.whl \
    && /opt/venv/bin/python -m pip uninstall --yes pip

# checkov:skip=CKV_DOCKER_7: the base is ARG BASE_IMAGE, whose default carries a version tag (3.11-slim-bookworm)
FROM ${BASE_IMAGE}
# A Java runtime for TorchServe. The JRE's postinst needs the man directory that slim bases drop.
# DL3008 (pin apt versions) is ignored: Debian's security updates replace a pinned version in the
# archive, which would break the build; the base image's release (bookworm) fixes the JRE's line.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/venv /opt/venv
# HOME and TMPDIR point at /tmp, the one writable path under a read-only root filesystem (mount a
# tmpfs or an emptyDir there); TorchServe's model store, logs and scratch files go there too.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LAYERMASK_HOST=0.0.0.0 \
    LAYERMASK_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464
# The gRPC health service reports SERVING once the models are loaded (the start period covers the load).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "layermask_service.healthcheck"]
ENTRYPOINT ["layermask"]
CMD ["serve"]
