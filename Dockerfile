# One image for every service of docker-compose.yml (sandbox, worker, beat, flower).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py flowerconfig.py ./
COPY worker ./worker
COPY tasks ./tasks
COPY bench ./bench
RUN pip install --no-cache-dir . && useradd --create-home payments && mkdir /data && chown payments /data
USER payments
