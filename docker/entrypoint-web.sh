#!/bin/sh
# Web container start: wait (bounded) for the database, migrate, then exec gunicorn.
# Only the web service migrates, so workers never race each other on schema changes.
#
# Environment:
#   WEB_CONCURRENCY    gunicorn worker processes (default 3)
#   GUNICORN_TIMEOUT   seconds before a silent gunicorn worker is restarted (default 120;
#                      large model/dataset uploads need more than gunicorn's 30)
#   DB_WAIT_SECONDS    give up waiting for the database after this long (default 60)
#   DB_WAIT_INTERVAL   seconds between attempts (default 2)
# Extra arguments are passed on to gunicorn.
set -eu

cd "${APP_DIR:-$(dirname "$0")/..}"

wait_seconds="${DB_WAIT_SECONDS:-60}"
interval="${DB_WAIT_INTERVAL:-2}"
start=$(date +%s)
attempt=1
# `check --database default` also runs the database system checks, so it fails until the DB
# accepts connections with the configured credentials.
until output=$(python manage.py check --database default 2>&1); do
    elapsed=$(( $(date +%s) - start ))
    if [ "$elapsed" -ge "$wait_seconds" ]; then
        echo "entrypoint: database not ready after ${elapsed}s (${attempt} attempts); last error:" >&2
        echo "$output" >&2
        exit 1
    fi
    echo "entrypoint: waiting for the database (attempt ${attempt})" >&2
    attempt=$((attempt + 1))
    sleep "$interval"
done

python manage.py migrate --noinput

exec gunicorn studyapp.wsgi:application \
    --bind 0.0.0.0:8000 \
    --workers "${WEB_CONCURRENCY:-3}" \
    --timeout "${GUNICORN_TIMEOUT:-120}" \
    --worker-tmp-dir /dev/shm \
    --access-logfile - \
    "$@"
