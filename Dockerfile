# The service image: CUDA-capable ONNX Runtime, the bundled model, no torch, non-root.
# CI builds the CPU image without a Docker engine and smoke-tests it: scripts/build_image.sh
# (buildah, on a debootstrapped Debian base: --build-arg BASE=localhost/debian-bookworm-base).
#   docker build -t ctc-asr . && docker run --gpus all -p 50051:50051 -p 8080:8080 -p 8000:8000 ctc-asr
# onnxruntime-gpu 1.31 wants CUDA 13 and cuDNN 9; without a GPU it falls back to the CPU provider.
ARG BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ make zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY ctc_asr /src/ctc_asr
COPY engine /src/engine
COPY service /src/service
COPY models/__init__.py /src/models/__init__.py
COPY export/__init__.py /src/export/__init__.py
# The native beam search is compiled in the source tree, then installed with it. A build behind a
# TLS-intercepting proxy passes the proxy's CA bundle as a secret (it stays out of the image):
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt
RUN --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir /src \
    && cd /src && /opt/venv/bin/python -m engine.decoder.native.build \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps --force-reinstall /src

FROM ${BASE}
# ffmpeg: uploads libsndfile cannot read (M4A/AAC, ...).
RUN apt-get update && apt-get install -y --no-install-recommends python3 libgomp1 ffmpeg \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 asr
COPY --from=build /opt/venv /opt/venv
COPY models/pretrained/default /models/default
ENV PATH=/opt/venv/bin:$PATH CTC_ASR_MODEL=/models/default PYTHONUNBUFFERED=1
USER asr
EXPOSE 50051 8080 8000
HEALTHCHECK CMD python3 -c "import urllib.request; urllib.request.urlopen('http://localhost:8080/readyz', timeout=2)" || exit 1
ENTRYPOINT ["python3", "-m", "service"]
