# One image for the web app and both Celery workers.
#
# torch comes from the PyTorch index named by TORCH_INDEX_URL, not from PyPI: on PyPI the
# Linux torch wheel is the multi-GB CUDA build. The default is the CPU build (web,
# worker-cpu); the gpu worker builds with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# (docker-compose.yml does that for the `worker` service).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first so code changes do not invalidate this layer.
# torch is installed alone from TORCH_INDEX_URL at the version pinned in requirements.txt;
# the later `pip install -r` then finds "torch==X" satisfied by "X+cpu"/"X+cu128" (PEP 440
# ignores the local label) and leaves it alone.
COPY requirements.txt ./
RUN python -m venv "$VIRTUAL_ENV" \
 && torch_pin="$(grep -E '^torch==' requirements.txt)" \
 && test -n "$torch_pin" \
 && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$torch_pin" \
 && pip install --no-cache-dir -r requirements.txt \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Code and static files are owned by root: the app user can read them, not change them.
COPY . .
# Settings refuse DEBUG=False without a >=50-character key and allowed hosts, hence the dummy
# values. DATA_DIR/MPLCONFIGDIR point at throwaway dirs so that nothing root-owned ends up
# in /data (a new named volume is seeded from the image's /data). Static files land in
# STATIC_ROOT's default, /app/staticfiles, served by WhiteNoise.
RUN chmod 0755 docker/entrypoint-web.sh \
 && DJANGO_SECRET_KEY=collectstatic-only-build-time-key-never-used-at-run-time \
    DJANGO_DEBUG=False \
    DJANGO_ALLOWED_HOSTS=localhost \
    DATA_DIR=/tmp/build-data \
    MPLCONFIGDIR=/tmp/build-mpl \
    python manage.py collectstatic --noinput \
 && rm -rf /tmp/build-data /tmp/build-mpl

# Uploads, models and rendered images live in DATA_DIR, shared by web and workers.
# matplotlib needs a writable config/cache dir (no $HOME writes in a locked-down container).
ENV DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib
RUN mkdir -p /data /tmp/matplotlib \
 && chown app:app /data /tmp/matplotlib

USER app
# Build matplotlib's font cache now, not on the first rendered explanation.
RUN python -c "import matplotlib.font_manager"

VOLUME ["/data"]
EXPOSE 8000

# gunicorn reads WEB_CONCURRENCY for its worker count. In compose the web service runs
# docker/entrypoint-web.sh instead (waits for the DB and migrates first).
CMD ["gunicorn", "studyapp.wsgi:application", "--bind", "0.0.0.0:8000", \
     "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
