# Image for the example deployment (docker-compose.yml): the SDK installed from this
# repository, and the examples/ package run from the working directory.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first, from pyproject.toml alone: a code change then rebuilds only the
# layers below, not every dependency.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['dashboard']))" \
    > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps ".[dashboard]" \
    && useradd --system --uid 10001 --no-create-home exosphere
USER exosphere

# Exec form: python gets SIGTERM directly and the Runtime stops cleanly on it.
CMD ["python", "-m", "examples.worker"]
