"""Deployment files: docker-compose.yml, .env.example, the Dockerfile and the web entrypoint.

docker-compose.yml is validated with Debian's `docker-compose` (v1) `config`, which needs no
Docker engine. It runs in a temporary copy of the project so no .env is left in the repo.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint-web.sh"

SERVICES = {"db", "redis", "web", "worker", "worker-cpu", "dispatcher"}
APP_SERVICES = ("web", "worker", "worker-cpu", "dispatcher")

# What studyapp.settings reads (agreed interface); settings modules are also scanned below.
SETTINGS_VARIABLES = {
    "DJANGO_SECRET_KEY",
    "DJANGO_DEBUG",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_CSRF_TRUSTED_ORIGINS",
    "DJANGO_SECURE_SSL_REDIRECT",
    "DJANGO_SECURE_HSTS_SECONDS",
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "REDIS_URL",
    "DATA_DIR",
    "MODEL_ALLOW_TORCHSCRIPT",
    "MAX_UPLOAD_MB",
    "EXPLAINER_DEVICE",
    "MPLCONFIGDIR",
}

INSTALL_HINT = (
    "docker-compose is not installed, so docker-compose.yml cannot be validated: "
    "install Debian's docker-compose package (apt-get install -y docker-compose)"
)


# --- helpers ---------------------------------------------------------------------------------


def _compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(INSTALL_HINT)
    pytest.skip(INSTALL_HINT)


def _project_copy(root: Path, env_text: str) -> Path:
    """The files compose needs, with .env beside docker-compose.yml, outside the repo."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "docker", root / "docker")
    (root / ".env").write_text(env_text)
    return root


def _run_compose_config(project: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment: variables of the calling shell would override .env values.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project), "LANG": "C.UTF-8"}
    return subprocess.run(
        [_compose_binary(), "-f", "docker-compose.yml", "config"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _option(command: list[str], *names: str) -> str | None:
    """Value of a command-line option given as `--name value` or `--name=value`."""
    for i, arg in enumerate(command):
        for name in names:
            if arg == name and i + 1 < len(command):
                return command[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _env_example_lines() -> list[str]:
    return ENV_EXAMPLE.read_text().splitlines()


_ASSIGNMENT = re.compile(r"^\s*(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def _env_example_values() -> dict[str, str]:
    values = {}
    for line in _env_example_lines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def _documented_variables() -> tuple[set[str], set[str]]:
    """(variables that have a comment above them or their group, variables without one)."""
    lines = _env_example_lines()
    documented, undocumented = set(), set()
    for i, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if not match:
            continue
        j = i - 1
        while j >= 0 and _ASSIGNMENT.match(lines[j]):
            j -= 1  # a group of related variables shares the comment above it
        has_comment = j >= 0 and lines[j].lstrip().startswith("#") and lines[j].strip("# ") != ""
        (documented if has_comment else undocumented).add(match.group(1))
    return documented, undocumented


def _dotted_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted_name(node.func)
    return ""


_VAR_NAME = re.compile(r"^[A-Z][A-Z0-9_]+$")


def environment_variables_read_by(source: str) -> set[str]:
    """Names read through os.environ/os.getenv/django-environ or an *env* helper."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            callee = _dotted_name(node.func)
            if callee.endswith(".setdefault"):
                continue
            if callee.split(".")[-1] == "Env":  # environ.Env(NAME=(type, default))
                names.update(k.arg for k in node.keywords if k.arg and _VAR_NAME.match(k.arg))
            elif "env" in callee.lower() and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    if _VAR_NAME.match(first.value):
                        names.add(first.value)
        elif isinstance(node, ast.Subscript) and _dotted_name(node.value).endswith("environ"):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                names.add(key.value)
    return names


def _settings_sources() -> list[Path]:
    package = REPO / "studyapp" / "settings"
    if package.is_dir():
        return sorted(package.glob("*.py"))
    module = REPO / "studyapp" / "settings.py"
    return [module] if module.exists() else []


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_result(tmp_path_factory) -> subprocess.CompletedProcess[str]:
    project = _project_copy(tmp_path_factory.mktemp("compose") / "project", ENV_EXAMPLE.read_text())
    return _run_compose_config(project)


@pytest.fixture(scope="module")
def services(compose_result) -> dict:
    assert compose_result.returncode == 0, compose_result.stderr
    return yaml.safe_load(compose_result.stdout)["services"]


@pytest.fixture(scope="module")
def volumes(compose_result) -> dict:
    assert compose_result.returncode == 0, compose_result.stderr
    return yaml.safe_load(compose_result.stdout).get("volumes") or {}


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_file_is_valid_with_the_example_env(compose_result):
    assert compose_result.returncode == 0, (
        f"docker-compose config failed:\n{compose_result.stderr}"
    )


def test_compose_defines_exactly_the_six_services(services):
    assert set(services) == SERVICES


def test_gpu_worker_reserves_one_nvidia_gpu(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert int(device["count"]) == 1
    assert "gpu" in device["capabilities"]


def test_gpu_worker_consumes_only_the_gpu_queue_one_task_at_a_time(services):
    command = services["worker"]["command"]
    assert command[:4] == ["celery", "-A", "worker", "worker"]
    assert _option(command, "-Q", "--queues") == "gpu"
    assert _option(command, "-c", "--concurrency") == "1"
    assert _option(command, "--prefetch-multiplier") == "1"


def test_gpu_worker_explains_on_cuda_with_a_cuda_torch_build(services):
    worker = services["worker"]
    assert worker["environment"]["EXPLAINER_DEVICE"] == "cuda"
    assert re.search(r"/whl/cu\d+$", worker["build"]["args"]["TORCH_INDEX_URL"])


def test_cpu_worker_consumes_the_cpu_queue_on_the_cpu(services):
    worker = services["worker-cpu"]
    command = worker["command"]
    assert command[:4] == ["celery", "-A", "worker", "worker"]
    assert _option(command, "-Q", "--queues") == "cpu"
    assert worker["environment"]["EXPLAINER_DEVICE"] == "cpu"
    assert "deploy" not in worker


def test_web_and_cpu_worker_images_use_the_cpu_torch_build(services):
    for name in ("web", "worker-cpu"):
        assert services[name]["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu"), name


def test_workers_answer_the_celery_liveness_ping(services):
    for name in ("worker", "worker-cpu"):
        check = " ".join(services[name]["healthcheck"]["test"])
        assert "celery -A worker inspect ping -d celery@$$HOSTNAME" in check, name


def test_web_waits_for_healthy_db_and_redis(services):
    depends_on = services["web"]["depends_on"]
    assert depends_on["db"]["condition"] == "service_healthy"
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_db_and_redis_have_healthchecks_that_compose_can_wait_for(services):
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_web_runs_the_entrypoint_and_serves_port_8000(services):
    web = services["web"]
    assert web["command"] == ["/app/docker/entrypoint-web.sh"]
    assert any(str(port).split("/")[0].endswith(":8000") for port in web["ports"])


def test_database_keeps_its_data_in_a_named_volume(services, volumes):
    mounts = [m.split(":") for m in services["db"]["volumes"]]
    named = [source for source, target, *_ in mounts if target == "/var/lib/postgresql/data"]
    assert named and named[0] in volumes


def test_web_and_workers_share_one_data_volume(services, volumes):
    sources = set()
    for name in APP_SERVICES:
        data_mounts = [m.split(":")[0] for m in services[name]["volumes"] if m.split(":")[1] == "/data"]
        assert len(data_mounts) == 1, name
        sources.add(data_mounts[0])
        assert services[name]["environment"]["DATA_DIR"] == "/data"
    assert len(sources) == 1 and sources <= set(volumes)


def test_app_services_reach_postgres_and_redis_by_service_name(services):
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert re.match(r"^postgres(ql)?://[^@]+@db:5432/\w+$", env["DATABASE_URL"]), name
        assert env["REDIS_URL"].startswith("redis://redis:6379"), name
        assert env["CELERY_BROKER_URL"].startswith("redis://redis:6379"), name


def test_app_services_read_the_env_file(services):
    values = _env_example_values()
    for name in APP_SERVICES:
        assert services[name]["environment"]["DJANGO_SECRET_KEY"] == values["DJANGO_SECRET_KEY"]


def test_compose_refuses_to_start_without_a_database_password(tmp_path):
    env_text = "\n".join(
        line for line in _env_example_lines() if not line.startswith("POSTGRES_PASSWORD=")
    )
    result = _run_compose_config(_project_copy(tmp_path / "project", env_text))
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# --- .env.example ----------------------------------------------------------------------------


def test_every_variable_settings_reads_is_documented_in_env_example():
    scanned = set()
    for path in _settings_sources():
        scanned |= environment_variables_read_by(path.read_text())
    documented, _ = _documented_variables()
    missing = sorted((SETTINGS_VARIABLES | scanned) - documented)
    assert not missing, f"add these to .env.example with a comment: {missing}"


def test_every_variable_in_env_example_has_a_comment():
    _, undocumented = _documented_variables()
    assert not undocumented, f"variables without a comment: {sorted(undocumented)}"


def test_env_example_ships_production_values_with_placeholders_to_replace():
    values = _env_example_values()
    assert values["DJANGO_DEBUG"] == "False"
    assert values["DJANGO_SECURE_SSL_REDIRECT"] == "True"
    assert values["MODEL_ALLOW_TORCHSCRIPT"] == "False"
    assert "replace-me" in values["DJANGO_SECRET_KEY"]
    assert "replace-me" in values["POSTGRES_PASSWORD"]
    assert values["CELERY_BROKER_URL"], "empty broker would run tasks inside the web process"


def _load_settings_with(env_values: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Import studyapp.settings in a fresh interpreter with exactly these variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env_values}
    env["DATA_DIR"] = str(tmp_path / "data")
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    env["DJANGO_SETTINGS_MODULE"] = "studyapp.settings"
    probe = (
        "import json; from django.conf import settings as s; print(json.dumps({"
        "'DEBUG': s.DEBUG, 'SECURE_SSL_REDIRECT': s.SECURE_SSL_REDIRECT, "
        "'ENGINE': s.DATABASES['default']['ENGINE'], 'BROKER': s.CELERY_BROKER_URL, "
        "'PROXY': s.SECURE_PROXY_SSL_HEADER is not None}))"
    )
    return subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_settings_accept_every_example_value_once_the_secret_key_is_replaced(tmp_path):
    values = _env_example_values()
    values["DJANGO_SECRET_KEY"] = "x" * 64
    result = _load_settings_with(values, tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": True,
        "ENGINE": "django.db.backends.postgresql",
        "BROKER": "redis://redis:6379/1",
        "PROXY": True,
    }


def test_settings_refuse_to_start_with_the_placeholder_secret_key(tmp_path):
    result = _load_settings_with(_env_example_values(), tmp_path)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_the_settings_scanner_finds_variables_read_in_every_usual_way():
    source = textwrap.dedent(
        """
        import os, environ
        env = environ.Env(DJANGO_DEBUG=(bool, False))
        A = os.environ.get("ONE", "x")
        B = os.environ["TWO"]
        C = os.getenv("THREE")
        D = env.bool("FOUR", default=False)
        E = env("FIVE")
        F = _env_list("SIX")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studyapp.settings")
        G = SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        """
    )
    assert environment_variables_read_by(source) == {
        "DJANGO_DEBUG", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX",
    }


# --- Dockerfile ------------------------------------------------------------------------------


def test_image_installs_torch_from_a_build_arg_index_defaulting_to_cpu():
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "$TORCH_INDEX_URL"' in text
    assert "--no-cache-dir -r requirements.txt" in text


def test_image_collects_static_files_and_runs_as_a_non_root_user():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    assert any("collectstatic --noinput" in line for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'VOLUME ["/data"]' in lines
    assert any(line.startswith("ENV DATA_DIR=/data") for line in lines)
    assert any("MPLCONFIGDIR=/tmp/matplotlib" in line for line in lines)
    cmd = [line for line in lines if line.startswith("CMD ")]
    assert cmd and "gunicorn" in cmd[-1] and "0.0.0.0:8000" in cmd[-1]


def test_docker_build_context_excludes_secrets_and_local_state():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "var/"} <= ignored
    assert "!.env.example" in ignored


# --- docker/entrypoint-web.sh ----------------------------------------------------------------


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _run_entrypoint(tmp_path: Path, failures: int, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the entrypoint with stub `python` and `gunicorn`; the DB check fails `failures` times."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    counter = tmp_path / "checks"
    _stub(
        bin_dir / "python",
        f"""\
        echo "python $*" >> "{log}"
        if [ "$2" = check ]; then
            n=$(cat "{counter}" 2>/dev/null || echo 0)
            echo $((n + 1)) > "{counter}"
            if [ {failures} -lt 0 ] || [ "$n" -lt {failures} ]; then
                echo "could not connect to server" >&2
                exit 1
            fi
        fi
        """,
    )
    _stub(bin_dir / "gunicorn", f'echo "gunicorn $*" >> "{log}"\n')
    run_env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "APP_DIR": str(tmp_path),
        "DB_WAIT_INTERVAL": "0.1",
        **env,
    }
    result = subprocess.run(
        ["sh", str(ENTRYPOINT)], env=run_env, capture_output=True, text=True, timeout=60
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_web_entrypoint_waits_for_the_database_then_migrates_then_execs_gunicorn(tmp_path):
    result, calls = _run_entrypoint(tmp_path, failures=2, WEB_CONCURRENCY="5")
    assert result.returncode == 0, result.stderr
    assert calls[:3] == ["python manage.py check --database default"] * 3
    assert calls[3] == "python manage.py migrate --noinput"
    gunicorn = calls[4].split()
    assert gunicorn[:2] == ["gunicorn", "studyapp.wsgi:application"]
    assert _option(gunicorn, "--bind") == "0.0.0.0:8000"
    assert _option(gunicorn, "--workers") == "5"
    assert len(calls) == 5


def test_web_entrypoint_runs_three_gunicorn_workers_by_default(tmp_path):
    result, calls = _run_entrypoint(tmp_path, failures=0)
    assert result.returncode == 0, result.stderr
    assert _option(calls[-1].split(), "--workers") == "3"


def test_web_entrypoint_gives_up_when_the_database_never_answers(tmp_path):
    result, calls = _run_entrypoint(tmp_path, failures=-1, DB_WAIT_SECONDS="1")
    assert result.returncode != 0
    assert "database not ready" in result.stderr
    assert "could not connect to server" in result.stderr
    assert calls and all("check --database default" in call for call in calls)


def test_web_entrypoint_is_executable():
    assert os.access(ENTRYPOINT, os.X_OK)
