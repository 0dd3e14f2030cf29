FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BNAAS_HOST=0.0.0.0 \
    BNAAS_PORT=8000 \
    BNAAS_STORE=sqlite:////data/bnaas.db

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bncore ./bncore
COPY service ./service
RUN pip install . \
    && useradd --system --uid 10001 bnaas \
    && mkdir /data && chown bnaas /data

USER bnaas
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["bnaas", "serve"]
