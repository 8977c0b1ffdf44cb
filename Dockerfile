# vramgate: a small Python service. NVML comes from the NVIDIA container runtime at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv
WORKDIR /app

# Dependencies first (cached while only the code changes), exactly as locked.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY proxy ./proxy
COPY config ./config
RUN uv sync --frozen --no-dev

# What vramgate learns of real load sizes survives restarts there (mount a volume on it).
RUN mkdir -p /var/lib/vramgate && chown nobody /var/lib/vramgate
ENV PATH="/app/.venv/bin:$PATH" \
    VRAMGATE_LISTEN=0.0.0.0:11434 \
    VRAMGATE_STATE_DIR=/var/lib/vramgate
EXPOSE 11434
# 200 while vramgate serves and its Ollama answers; 503 with the reason otherwise.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:11434/vramgate/health', timeout=4)"]
USER nobody
ENTRYPOINT ["vramgate"]
CMD ["serve"]
