# Omni Hub image: the core plus the plugins in this repository.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY omni_core ./omni_core
COPY plugins ./plugins
RUN pip install ".[otel]" ./plugins/omni-whatsapp-evolution ./plugins/omni-hive ./plugins/omni-slack ./plugins/omni-discord \
    && useradd --system --home /var/lib/omni omni && mkdir -p /var/lib/omni && chown omni /var/lib/omni

USER omni
ENV AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH=/var/lib/omni/automagik-omni.db
EXPOSE 8882
CMD ["omni", "serve"]
