"""docker-compose.yml validates against the Compose Specification's JSON schema, its images
are pinned, every variable it needs is asked for by name, and the services are wired to each
other and to deploy/. A broken compose file fails."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy import DOCKERFILE, PROJECT, ROOT
from tests.deploy.npm import compose_schema

COMPOSE = ROOT / "docker-compose.yml"
VERSION = PROJECT["version"]
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}")


def compose_errors(document: Any) -> list[str]:
    schema = json.loads(compose_schema().read_text())
    # the schema names draft 2019-09 as "http://...#", which jsonschema does not look up
    validator = jsonschema.Draft201909Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(document)
    ]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_compose_file_validates_against_the_compose_specification(compose) -> None:
    assert compose_errors(compose) == []


def test_every_image_is_pinned(compose) -> None:
    services = compose["services"]
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", (name, image)
        if "build" in service:  # lifeloop's own images carry the package's version
            assert repository.startswith("lifeloop/") and tag == VERSION, (name, image)
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:[\w.-]*\d[\w.-]*", base) and "latest" not in base, base
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in bases  # Triton 2.51, as served here


def test_secrets_come_from_the_environment_and_are_asked_for_by_name() -> None:
    used = {}
    for name, operator, rest in _VARIABLE.findall(COMPOSE.read_text()):
        used.setdefault(name, set()).add((operator, rest))
        # no bare ${X}: either a default or an error message that names what to set
        assert operator in (":-", ":?"), name
        if operator == ":?":
            assert rest.startswith(f"set {name} "), (name, rest)
    assert {op for op, _ in used["LIFELOOP_API_KEY"]} == {":?"}
    assert {op for op, _ in used["LIFELOOP_PG_PASSWORD"]} == {":?"}


def test_the_services_are_wired_to_each_other_and_to_deploy(compose) -> None:
    services = compose["services"]
    tritons = {n: s for n, s in services.items() if s.get("build", {}).get("target") == "triton"}
    assert set(tritons) == {"triton-gpu", "triton-cpu"}
    assert tritons["triton-gpu"]["profiles"] == ["gpu"]
    assert tritons["triton-cpu"]["profiles"] == ["cpu"] and "deploy" not in tritons["triton-cpu"]
    device = tritons["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"]
    for triton in tritons.values():
        command = triton["command"]
        assert "--model-control-mode=explicit" in command
        assert any(
            c.startswith("--http-restricted-api=model-repository:lifeloop-key=") for c in command
        )
        assert any(
            c.startswith("--grpc-restricted-protocol=model-repository:lifeloop-key=")
            for c in command
        )
        assert triton["shm_size"] and triton["networks"]["default"]["aliases"] == ["tritonserver"]
        # The repository and what lifeloop keeps beside it are at the same paths in Triton
        # and the tools: the router's config names its kept-input folder by absolute path.
        beside = [v for v in triton["volumes"] if v.startswith("./model_repository")]
        assert len(beside) == 3 and set(beside) <= set(services["lifeloop"]["volumes"])
        repository = dict(v.split(":")[:2] for v in beside)["./model_repository"]
        assert f"--model-repository={repository}" in command
        assert f"{services['lifeloop']['working_dir']}/model_repository" == repository

    # Prometheus scrapes the alias and loads deploy/prometheus; Grafana provisions deploy/grafana.
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for s in job["static_configs"]
        for t in s["targets"]
    ]
    assert targets == ["tritonserver:8002"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    provider = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "lifeloop.yml").read_text()
    )
    dashboards = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{dashboards}:ro" in services["grafana"]["volumes"]

    # The tools, the Locust master and its workers run lifeloop's image; the workers find
    # the master; the feedback store is the postgres service.
    for name in ("lifeloop", "locust-master", "locust-worker"):
        assert services[name]["build"]["target"] == "tools"
    worker = services["locust-worker"]["command"]
    assert worker[worker.index("--master-host") + 1] == "locust-master"
    assert "--master" in services["locust-master"]["command"]
    assert services["lifeloop"]["environment"]["PGHOST"] == "postgres"
    assert services["lifeloop"]["environment"]["LIFELOOP_SERVERS"] == "http://tritonserver:8000"


def test_the_cpu_server_waits_for_the_quickstart_to_fill_an_empty_repository(compose) -> None:
    services = compose["services"]
    quickstart, triton = services["quickstart"], services["triton-cpu"]
    assert quickstart["build"]["target"] == "tools" and quickstart["image"].startswith(
        "lifeloop/tools:"
    )
    # In `tools` like the other one-shot commands, and in `cpu` as well: Compose starts a
    # dependency only when one of its profiles is active, so `--profile cpu up` runs it.
    assert set(quickstart["profiles"]) == {"tools", "cpu"}
    assert triton["depends_on"]["quickstart"] == {"condition": "service_completed_successfully"}
    assert "quickstart" not in services["triton-gpu"].get("depends_on", {})
    assert "restart" not in quickstart  # one-shot: it exits 0 and stays down

    # It writes what Triton serves, at the same paths: the same repository and the folders
    # lifeloop keeps beside it, and the digits the tools' retrain replays.
    beside = [v for v in triton["volumes"] if v.startswith("./model_repository")]
    assert set(beside) <= set(quickstart["volumes"])
    data = [v for v in quickstart["volumes"] if v.startswith("./model_repository.data:")]
    assert data and data[0] in services["lifeloop"]["volumes"]
    repository = dict(v.split(":")[:2] for v in beside)["./model_repository"]
    command = quickstart["command"]
    assert command[0] == "quickstart" and f"--repository={repository}" in command
    # "Empty" is the command's own test: --if-empty exits 0 on a repository with a model.
    assert "--if-empty" in command
    # The store is the postgres service, found through libpq's variables as Triton's is.
    assert "--store=postgresql+psycopg://" in command
    assert quickstart["environment"] == triton["environment"]
    assert quickstart["depends_on"]["postgres"] == {"condition": "service_healthy"}


@pytest.mark.parametrize(
    "breakage",
    [
        ("  shm_size: 2gb\n", "  shm_size: 2gb\n  gpu_count: 1\n"),  # not a Compose key
        ("      replicas: 2\n", "      replicas: two\n"),
        ('    ports:\n      - "9090:9090"\n', "    ports:\n      9090: 9090\n"),
    ],
    ids=["unknown-key", "wrong-type", "list-for-mapping"],
)
def test_a_broken_compose_file_fails(breakage: tuple[str, str]) -> None:
    text = COMPOSE.read_text()
    old, new = breakage
    assert old in text
    errors = compose_errors(yaml.safe_load(text.replace(old, new, 1)))
    assert errors


def test_the_build_context_holds_only_what_the_dockerfile_copies() -> None:
    """`docker compose build` sends the context to the engine: the venv alone is gigabytes."""
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line]
    assert ignore[ignore.index("*")] == "*"  # everything is left out first...
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copied |= {source.rstrip("/") for source in line.split()[1:-1]}
    assert copied  # ...then what COPY needs is let back in
    for source in copied:
        assert any(source == a or source.startswith(f"{a}/") for a in allowed), source
