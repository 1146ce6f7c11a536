"""The study's record is append-only, in the database: triggers refuse what no one may do.

* a confirmatory AnalysisRun is never deleted or changed, and no run becomes confirmatory after
  the fact (exploratory runs stay deletable);
* a PreregistrationDeviation is never deleted or changed;
* a launched Study (``frozen_sha256`` set) is never deleted, and its ``frozen_config``,
  ``frozen_sha256`` and ``launched_at`` never change (its state, ``closed_at``, title... may).

Triggers and not only Python: ``QuerySet.update``/``delete``, the shell and raw SQL bypass model
methods and admin permissions, and the report's "look 2 of 2" is only honest if no look can
disappear. TRUNCATE does not fire row triggers: it stays available to the table's owner (and to
the test runner's flush on PostgreSQL).

Hazard: on SQLite, Django applies many schema changes by rebuilding the table (new table, copy,
drop, rename), which drops its triggers. So the triggers are installed by migration 0007 and again
after every ``migrate`` (post_migrate, idempotent) once 0007 is applied.
"""
from __future__ import annotations

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.signals import post_migrate

MIGRATION = ("studyapp", "0007_append_only_records")
# Every refusal says "append-only" in its words: append_only_refusal() recognises them by it.
MARK = "append-only"
RUN_DELETE = ("A confirmatory analysis run cannot be deleted: every confirmatory look at the data stays on the "
              "study's record (append-only). Exploratory runs can be deleted.")
RUN_UPDATE = ("A confirmatory analysis run cannot be changed, and no run can become confirmatory after the fact: "
              "confirmatory results stay on the study's record as they were computed (append-only). Run the "
              "analysis again to add a new run.")
DEVIATION_DELETE = ("A recorded deviation from the pre-registration cannot be deleted: deviations stay on the "
                    "study's record (append-only).")
DEVIATION_UPDATE = ("A recorded deviation from the pre-registration cannot be changed: deviations stay on the "
                    "study's record (append-only). Record a new deviation that corrects it.")
STUDY_DELETE = ("A launched study cannot be deleted: its frozen plan, participants and analyses are the record of "
                "the experiment (append-only). Close it instead.")
STUDY_UPDATE = ("The frozen plan of a launched study cannot be changed: its configuration, SHA-256 and launch time "
                "are fixed at launch (append-only). Record a deviation from the plan instead.")

RUN, DEVIATION, STUDY = "studyapp_analysisrun", "studyapp_preregistrationdeviation", "studyapp_study"


def _q(message: str) -> str:
    return "'" + message.replace("'", "''") + "'"


# PostgreSQL: one function and one BEFORE UPDATE OR DELETE row trigger per table. SQLSTATE 23000
# (integrity_constraint_violation) reaches Django as an IntegrityError.
def _raise(message: str) -> str:
    return f"RAISE EXCEPTION USING ERRCODE = '23000', MESSAGE = {_q(message)};"


POSTGRESQL = {
    RUN: f"""
        IF TG_OP = 'DELETE' THEN
            IF OLD.kind = 'confirmatory' THEN {_raise(RUN_DELETE)} END IF;
            RETURN OLD;
        END IF;
        IF OLD.kind = 'confirmatory' OR NEW.kind = 'confirmatory' THEN {_raise(RUN_UPDATE)} END IF;
        RETURN NEW;""",
    DEVIATION: f"""
        IF TG_OP = 'DELETE' THEN {_raise(DEVIATION_DELETE)} END IF;
        {_raise(DEVIATION_UPDATE)}""",
    STUDY: f"""
        IF TG_OP = 'DELETE' THEN
            IF OLD.frozen_sha256 <> '' THEN {_raise(STUDY_DELETE)} END IF;
            RETURN OLD;
        END IF;
        IF OLD.frozen_sha256 <> '' AND (NEW.frozen_sha256 IS DISTINCT FROM OLD.frozen_sha256
                OR NEW.frozen_config IS DISTINCT FROM OLD.frozen_config
                OR NEW.launched_at IS DISTINCT FROM OLD.launched_at) THEN
            {_raise(STUDY_UPDATE)}
        END IF;
        RETURN NEW;""",
}

# SQLite: RAISE(ABORT, ...) in a BEFORE trigger with a WHEN clause (an IntegrityError in Python).
# JSON is stored as text: json() compares it without caring about whitespace.
SQLITE = {
    RUN: [("DELETE", "OLD.kind = 'confirmatory'", RUN_DELETE),
          ("UPDATE", "OLD.kind = 'confirmatory' OR NEW.kind = 'confirmatory'", RUN_UPDATE)],
    DEVIATION: [("DELETE", "1", DEVIATION_DELETE), ("UPDATE", "1", DEVIATION_UPDATE)],
    STUDY: [("DELETE", "OLD.frozen_sha256 <> ''", STUDY_DELETE),
            ("UPDATE", "OLD.frozen_sha256 <> '' AND (NEW.frozen_sha256 IS NOT OLD.frozen_sha256 "
                       "OR json(NEW.frozen_config) IS NOT json(OLD.frozen_config) "
                       "OR NEW.launched_at IS NOT OLD.launched_at)", STUDY_UPDATE)],
}


def _name(table: str, operation: str = "") -> str:
    return f"{table}_append_only" + (f"_{operation.lower()}" if operation else "")


def _statements(vendor: str) -> list[str]:
    if vendor == "postgresql":
        return [statement for table, body in POSTGRESQL.items() for statement in (
            f"CREATE OR REPLACE FUNCTION {_name(table)}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN{body}\nEND;\n$$",
            f"CREATE OR REPLACE TRIGGER {_name(table)} BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {_name(table)}()")]
    if vendor == "sqlite":
        return [statement for table, rules in SQLITE.items() for operation, when, message in rules
                for statement in (
                    f"DROP TRIGGER IF EXISTS {_name(table, operation)}",
                    f"CREATE TRIGGER {_name(table, operation)} BEFORE {operation} ON {table} FOR EACH ROW "
                    f"WHEN {when} BEGIN SELECT RAISE(ABORT, {_q(message)}); END")]
    raise NotImplementedError(f"Append-only triggers are written for PostgreSQL and SQLite, not {vendor}.")


def append_only_install(*, connection: BaseDatabaseWrapper) -> None:
    """Create (or replace) the triggers; idempotent."""
    with connection.cursor() as cursor:
        for statement in _statements(connection.vendor):
            cursor.execute(statement)


def append_only_uninstall(*, connection: BaseDatabaseWrapper) -> None:
    with connection.cursor() as cursor:
        for table in (RUN, DEVIATION, STUDY):
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {_name(table)} ON {table}")
                cursor.execute(f"DROP FUNCTION IF EXISTS {_name(table)}()")
            else:
                for operation in ("DELETE", "UPDATE"):
                    cursor.execute(f"DROP TRIGGER IF EXISTS {_name(table, operation)}")


def append_only_refusal(exc: BaseException) -> str | None:
    """The words of an append-only trigger's refusal, or None when ``exc`` is another error.

    PostgreSQL's primary message comes without the driver's "CONTEXT: PL/pgSQL function ..." lines.
    """
    cause = exc.__cause__ or exc
    diag = getattr(cause, "diag", None)
    text = (getattr(diag, "message_primary", None) or str(cause)).strip()
    return text if MARK in text else None


def _reinstall_after_migrate(sender, using: str = "default", **kwargs) -> None:
    # See the module docstring: a table rebuilt by a later migration on SQLite lost its triggers.
    if getattr(sender, "label", None) != MIGRATION[0]:
        return
    from django.db.migrations.recorder import MigrationRecorder

    connection = connections[using]
    if connection.vendor in ("postgresql", "sqlite") and MIGRATION in MigrationRecorder(
            connection).applied_migrations():
        append_only_install(connection=connection)


post_migrate.connect(_reinstall_after_migrate, dispatch_uid="studyapp.append_only.reinstall")
