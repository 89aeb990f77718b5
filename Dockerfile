# The TAPAS project image: every service in docker-compose.yml runs `tapas <command>` from it.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY foundation foundation
COPY contracts contracts
COPY tapas tapas
COPY ingest ingest
COPY streams streams
COPY forecasting forecasting
COPY controller controller
COPY dashboard dashboard
COPY simulator simulator
COPY bench bench
COPY router router
RUN pip install .
RUN useradd --create-home --uid 10001 tapas && mkdir -p /var/lib/tapas && chown tapas /var/lib/tapas
USER tapas
WORKDIR /var/lib/tapas
ENTRYPOINT ["tapas"]
CMD ["--help"]
