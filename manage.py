#!/usr/bin/env python
"""Django's command-line utility."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studyapp.settings")
    # The developer's tool runs the embedded default with DEBUG on; the settings themselves default
    # to production (the web server and workers fail closed when DJANGO_DEBUG is forgotten).
    os.environ.setdefault("DJANGO_DEBUG", "true")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
