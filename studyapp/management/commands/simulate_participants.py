"""manage.py simulate_participants --study SLUG --n N [--accuracy ARM=P ...] [--base-url URL]"""
from __future__ import annotations

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from studyapp.models import Study
from studyapp.services.simulation import simulate_participants


class Command(BaseCommand):
    help = ("Run N simulated participants through the real participant API, from consent to the completion "
            "code. Works on a ready study (a pilot); on a live one only with --allow-live (load tests). "
            "Simulated participants never count toward targets or enter a confirmatory analysis.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--study", required=True, help="The study's slug.")
        parser.add_argument("--n", type=int, required=True, help="How many participants (1 to 5000).")
        parser.add_argument("--accuracy", action="append", default=[], metavar="ARM=P",
                            help="Accuracy of the arm's participants on prediction trials (default 0.7).")
        parser.add_argument("--base-url", default="", help="A running server (default: in-process).")
        parser.add_argument("--allow-live", action="store_true", help="Also on a live study (load tests).")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, study: str, n: int, accuracy: list[str], base_url: str, allow_live: bool, seed: int,
               **options) -> None:
        target = Study.objects.filter(slug=study).first()
        if target is None:
            raise CommandError(f"No study with the slug '{study}'.")
        if not 1 <= n <= 5000:
            raise CommandError("--n must be between 1 and 5000.")
        per_arm = {}
        arm_names = set(target.arms.values_list("name", flat=True))
        for item in accuracy:
            name, _, value = item.partition("=")
            try:
                p = float(value)
            except ValueError:
                raise CommandError(f"--accuracy {item!r}: write ARM=P with P a number from 0 to 1.") from None
            if name not in arm_names:
                raise CommandError(f"--accuracy {item!r}: the study has no arm '{name}' "
                                   f"(arms: {', '.join(sorted(arm_names))}).")
            if not 0 <= p <= 1:
                raise CommandError(f"--accuracy {item!r}: P must be from 0 to 1.")
            per_arm[name] = p
        try:
            summary = simulate_participants(study=target, n=n, accuracy=per_arm, base_url=base_url or None,
                                            allow_live=allow_live, rng=np.random.default_rng(seed))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"{summary['participants']} simulated participants finished "
                                             f"({summary['answers']} answers)."))
        for outcome, count in sorted(summary["outcomes"].items()):
            self.stdout.write(f"  {outcome}: {count}")
        for arm, count in sorted(summary["arms"].items()):
            self.stdout.write(f"  arm {arm}: {count}")
