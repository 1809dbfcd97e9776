# One image for every service of docker-compose.yml (sandbox, worker, beat, flower).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# The exact, hash-checked versions of requirements/runtime.txt (./dev lock writes it), then the project
# itself with the locked setuptools: nothing unpinned is installed.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md celeryconfig.py flowerconfig.py ./
COPY worker ./worker
COPY tasks ./tasks
COPY bench ./bench
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && useradd --create-home payments && mkdir /data && chown payments /data
USER payments
