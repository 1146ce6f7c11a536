"""`make demo`'s path on the embedded default: SQLite, tasks in-process, a real HTTP server."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import http.cookiejar
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from benchmarks.common import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "DATABASE_URL", "CELERY_", "REDIS_URL"))}
    env.update({"DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"})
    return env


def manage(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("embedded")
    env = embedded_env(data_dir)
    port = free_port()
    manage("migrate", "--noinput", env=env)
    first = manage("demo_setup", "--base-url", f"http://127.0.0.1:{port}", env=env)
    second = manage("demo_setup", "--base-url", f"http://127.0.0.1:{port}", env=env)
    server = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get(f"http://127.0.0.1:{port}/healthz/")
                break
            except OSError:
                assert time.monotonic() < deadline, "runserver did not start"
                time.sleep(0.3)
        yield {"first": first, "second": second, "data_dir": data_dir, "port": port}
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_demo_uses_sqlite_in_the_data_dir(demo):
    assert (demo["data_dir"] / "db.sqlite3").exists()


def test_demo_prints_an_admin_login_that_works_and_a_link_per_study(demo):
    match = re.search(r"user (\S+), password (\S+)\)", demo["first"])
    assert match, demo["first"]
    user, password = match.groups()
    base = f"http://127.0.0.1:{demo['port']}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{base}/admin/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": user, "password": password, "csrfmiddlewaretoken": token,
                                   "next": "/admin/"}).encode()
    request = urllib.request.Request(f"{base}/admin/login/?next=/admin/", data=form, headers={"Referer": base})
    dashboard = opener.open(request, timeout=10).read().decode()
    assert "Log out" in dashboard and "Studies" in dashboard
    assert len(re.findall(r"\[live\]: http://127\.0\.0\.1:\d+/s/[0-9a-f-]{36}/", demo["first"])) == 2


def test_every_demo_study_landing_page_is_served(demo):
    links = re.findall(r"\[live\]: (http://\S+)", demo["first"])
    for link in links:
        status, page = get(link)
        assert status == 200 and "consent" in page.lower()


def test_rerunning_the_demo_creates_nothing_new_and_keeps_the_links(demo):
    assert "created" not in demo["second"]
    assert re.findall(r"/s/[0-9a-f-]{36}/", demo["first"]) == re.findall(r"/s/[0-9a-f-]{36}/", demo["second"])
    assert re.search(r"password (\S+)\)", demo["first"]).group(1) == re.search(r"password (\S+)\)",
                                                                              demo["second"]).group(1)


def test_the_filled_pilot_has_an_analysed_report_of_its_simulated_participants(demo):
    assert re.search(r"\[closed\], report: http://127\.0\.0\.1:\d+/staff/studies/\d+/report/", demo["first"])
    out = manage("shell", "-c", "from studyapp.models import AnalysisRun, Participant; "
                 "run = AnalysisRun.objects.filter(study__slug='demo-breast-cancer-pilot').last(); "
                 "people = Participant.objects.filter(study__slug='demo-breast-cancer-pilot'); "
                 "print('analysed', run.results['analysed_participants'], run.kind, people.count(), "
                 "people.filter(simulated=True).count())", env=embedded_env(demo["data_dir"]))
    analysed, kind, total, simulated = re.search(r"analysed (\d+) (\w+) (\d+) (\d+)", out).groups()
    assert kind == "exploratory" and total == simulated == "60" and int(analysed) >= 50
