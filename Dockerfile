# One image for every role of the distributed shape; docker-compose.yml picks the role by command:
#   latentlab db upgrade | web | worker --queues … | flower | up (everything in one container)
FROM python:3.11-slim

# torch goes in first, from an overridable spec and index, so `pip install .` below finds it satisfied.
# The default (PyPI) Linux wheel carries CUDA, which the GPU workers need; for a smaller CPU-only image:
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://pypi.org/simple"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LATENTLAB_DATA=/data \
    LATENTLAB_SIGNING_KEY_FILE=/keys/signing.key \
    LATENTLAB_SHIPPED_MODELS=/app/data/models

RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

WORKDIR /app
COPY pyproject.toml ./
COPY common ./common
COPY web ./web
COPY workers ./workers
COPY cli ./cli
COPY migrations ./migrations
COPY data ./data
RUN pip install ".[flower]"

# an unprivileged user; named volumes mounted on /data and /keys start out owned by it
RUN useradd --system --uid 10001 --create-home latentlab \
    && mkdir -p /data /keys \
    && chown latentlab:latentlab /data /keys
USER latentlab

EXPOSE 8000
ENTRYPOINT ["latentlab"]
CMD ["up", "--host", "0.0.0.0", "--port", "8000"]
