"""PostgreSQL helpers shared by the benchmark scripts: each benchmark runs in a database of its own."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def pg_connect(pg: str, db: str = "postgres"):
    import psycopg2

    connection = psycopg2.connect(urlunsplit(urlsplit(pg)._replace(path=f"/{db}")))
    connection.autocommit = True
    return connection


def recreate_database(pg: str, db: str, *, create: bool = True) -> None:
    """Drop ``db`` (its connections too) and, unless told not to, create it empty."""
    connection = pg_connect(pg)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if create:
            cursor.execute(f'CREATE DATABASE "{db}"')
    connection.close()
