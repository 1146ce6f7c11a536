from __future__ import annotations

from django.core.management.base import BaseCommand
from django.urls import reverse

from studyapp.services.demo import demo_setup


class Command(BaseCommand):
    help = "Create (or reuse) the demo datasets, models, studies and admin login, and print the URLs."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, base_url: str, **options) -> None:
        result = demo_setup()
        for line in result.created:
            self.stdout.write(f"created {line}")
        self.stdout.write(self.style.SUCCESS("Demo ready."))
        self.stdout.write(f"  Admin:    {base_url}{reverse('admin:index')}  "
                          f"(user {result.admin_username}, password {result.admin_password})")
        for study in result.studies:
            if study.state == study.State.CLOSED:  # the filled pilot: its report, not a participant link
                self.stdout.write(f"  Study '{study.title}' [{study.state}], report: "
                                  f"{base_url}{reverse('report-study', args=[study.pk])}")
                continue
            self.stdout.write(f"  Study '{study.title}' [{study.state}]: "
                              f"{base_url}{reverse('study-landing', args=[study.public_id])}")
