from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from studyapp.services.media import DEFAULT_GRACE, media_delete_orphans, media_orphans


class Command(BaseCommand):
    help = ("Delete stored stimulus, explanation, edit and model files that no row refers to "
            "(left by deleted rows or by racing preparations). Files newer than --grace-hours are kept.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
        parser.add_argument("--grace-hours", type=float, default=DEFAULT_GRACE.total_seconds() / 3600,
                            help="keep unreferenced files younger than this (a preparation in progress "
                                 "writes files before their rows); default %(default)s")

    def handle(self, *args, **opts) -> None:
        if opts["grace_hours"] < 0:
            raise CommandError(f"--grace-hours must be zero or more; got {opts['grace_hours']}.")
        grace = dt.timedelta(hours=opts["grace_hours"])
        report = (media_orphans if opts["dry_run"] else media_delete_orphans)(grace=grace)
        verb = "Would delete" if opts["dry_run"] else "Deleted"
        for path in report.orphans:
            self.stdout.write(f"{verb} {path}")
        self.stdout.write(f"{verb} {len(report.orphans)} unreferenced file(s); kept {report.referenced} in use "
                          f"and {report.kept_recent} unreferenced but newer than {opts['grace_hours']:g} h.")
