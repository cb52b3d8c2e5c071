# The vending server's image: web (granian, every HTTP request), ws (Daphne, the WebSocket
# /ws/), discovery, serial bridge and sweeper all run from it with different commands (see
# docker-compose.yml). By default it runs granian (deploy/web.py).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/srv/data \
    STATIC_ROOT=/srv/static

WORKDIR /app

COPY requirements/ requirements/
RUN pip install -r requirements/prod.txt

# A fixed uid/gid so volumes keep their owner across rebuilds; dialout (gid 20 in Debian)
# for the serial bridge's /dev/ttyUSB0.
RUN groupadd --system --gid 10001 vending \
    && useradd --system --uid 10001 --gid vending --groups dialout --home-dir /app vending \
    && mkdir -p /srv/data /srv/static \
    && chown vending:vending /srv/data /srv/static

COPY --chown=vending:vending . .

USER vending
# No database is needed to collect static files; a throwaway key keeps settings from writing
# one into the image.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["python", "deploy/web.py", "--bind", "0.0.0.0:8000"]
