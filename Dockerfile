# u2qt token service. CPU image by default; GPU image (onnxruntime-gpu, CUDA execution provider) with
#   docker build --build-arg VARIANT=gpu -t u2qt:gpu .
# and the daily job's image (u2qt batch: CPU ONNX Runtime, Arrow, Ray Data) with --build-arg VARIANT=batch.
# The install steps are deploy/install.sh, the same script CI runs. Artifacts (an exported tokenizer
# directory with manifest.json) are mounted at /artifacts:
#   docker run -p 8000:8000 -v "$PWD/artifacts/cj:/artifacts:ro" -e REDIS_URL=redis://redis:6379/0 u2qt
# or baked into the image with --target baked (copies artifacts/cj).
FROM python:3.11-slim-bookworm AS runtime
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    U2QT_ARTIFACTS=/artifacts \
    U2QT_EMBEDDED_REDIS_DIR=/tmp/u2qt-redis
WORKDIR /app
COPY pyproject.toml README.md ./
COPY model/ model/
COPY service/ service/
COPY deploy/install.sh deploy/install.sh
RUN case "$VARIANT" in cpu) mode=serve ;; gpu) mode=serve-gpu ;; batch) mode="batch" ;; \
      *) echo "VARIANT is cpu, gpu or batch" >&2; exit 1 ;; esac \
    && bash deploy/install.sh "$mode" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin u2qt
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# exec form: u2qt is PID 1 and receives SIGTERM itself, so the batches in flight drain before exit
CMD ["u2qt", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS baked
COPY --chown=10001:10001 artifacts/cj /artifacts

FROM runtime AS default
