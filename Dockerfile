# Image for the example deployment (docker-compose.yml): the SDK installed from this
# repository, and the examples/ package run from the working directory.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
RUN pip install --no-cache-dir ".[dashboard]" \
    && useradd --system --uid 10001 --no-create-home exosphere
USER exosphere

# Exec form: python gets SIGTERM directly and the Runtime stops cleanly on it.
CMD ["python", "-m", "examples.worker"]
