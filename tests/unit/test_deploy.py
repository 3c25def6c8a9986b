"""deploy/: the container build file, the compose file and the Kubernetes base, checked offline.

No Docker engine or cluster runs here, so the files are validated against the schemas their
tools use (compose-spec, shipped by check-jsonschema; the Kubernetes API schemas, shipped by
kubernetes-validate), and every role of deploy/Procfile must appear in each with the same shell
line, so the ways of running imap-pipeline cannot drift apart.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.config import variable_names
from pipeline.dev.roles import read_procfile

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
PROCFILE = {role.name: role.command for role in read_procfile(DEPLOY / "Procfile")}
# Variables that are not imap-pipeline settings but are read by what runs in the containers.
FOREIGN_VARIABLES = {
    "FLOWER_BASIC_AUTH",  # Flower reads FLOWER_* options from the environment
    "POSTGRES_PASSWORD",  # the postgres image (compose only)
    "PROMETHEUS_MULTIPROC_DIR",  # prometheus-client
}
# Shell-expanded knobs of the Procfile lines (${VAR:-default}), not Settings fields.
PROCFILE_VARIABLES = set(re.findall(r"\$\{(IMAP_PIPELINE_[A-Z_]+):-", "\n".join(PROCFILE.values())))
# compose-only knobs: interpolated by compose itself (replicas, the published API address).
COMPOSE_VARIABLES = {
    "IMAP_PIPELINE_SYNC_REPLICAS",
    "IMAP_PIPELINE_LISTENER_REPLICAS",
    "IMAP_PIPELINE_API_PUBLISH",
}


def shell_line(role: str) -> list[str]:
    """The argv every runner gives a role: what `imap-pipeline up` runs for its Procfile line."""
    return ["/bin/sh", "-c", f"exec {PROCFILE[role]}"]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def kustomize_base() -> list[dict[str, Any]]:
    """The base rendered the way kustomize reads it: every document of every resource."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((BASE / resource).read_text()) if d)
    return docs


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kustomize_base() if d["kind"] == "Deployment"}


def known_settings() -> set[str]:
    return variable_names() | PROCFILE_VARIABLES


# --- compose ----------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    loaded: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return loaded


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [e.message for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification() -> None:
    assert compose_errors(compose()) == []


def test_the_compose_check_catches_a_wrong_file() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["api"]["helthcheck"] = {"test": ["CMD", "true"]}  # a typo compose refuses
    assert compose_errors(broken)


def test_compose_runs_every_procfile_role_with_its_procfile_command() -> None:
    services = compose()["services"]
    for role in PROCFILE:
        assert role in services, f"compose.yaml has no service for Procfile role {role!r}"
        # "$$" is compose's escape for a "$" that the container's shell expands
        command = [part.replace("$$", "$") for part in services[role]["command"]]
        assert command == shell_line(role), role


def test_compose_runs_postgres_redis_and_the_scaling_knobs() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate"} <= set(services)
    assert services["beat"]["deploy"]["replicas"] == 2  # redbeat: one active, one standby
    assert "IMAP_PIPELINE_LISTENER_REPLICAS" in str(services["listener"]["deploy"]["replicas"])
    assert "IMAP_PIPELINE_SYNC_REPLICAS" in str(services["sync"]["deploy"]["replicas"])
    assert "IMAP_PIPELINE_SYNC_CONCURRENCY" in services["sync"]["environment"]
    for role in PROCFILE:
        depends = services[role]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", role
    # Flower and the API are published on the Docker host's loopback unless told otherwise
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert services["api"]["ports"][0].startswith("${IMAP_PIPELINE_API_PUBLISH:-127.0.0.1:")


def test_compose_probes_every_long_running_role_except_flower_with_the_health_command() -> None:
    services = compose()["services"]
    parser = build_parser()
    for role in PROCFILE:
        if role == "flower":
            continue  # its port is only published on loopback; health flower is the same check
        test = services[role]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "imap-pipeline", "health"], role
        assert parser.parse_args(test[2:]).role == role


# --- Kubernetes -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_of_the_base() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)


@pytest.mark.parametrize(
    "document",
    kustomize_base(),
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_every_manifest_is_valid_for_the_kubernetes_api(document: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(document, version, strict=True)


def test_the_kubernetes_check_catches_a_wrong_manifest() -> None:
    broken = copy.deepcopy(deployments()["imap-pipeline-api"])
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_a_deployment_per_procfile_role_runs_its_procfile_command() -> None:
    found = deployments()
    for role in PROCFILE:
        deployment = found.get(f"imap-pipeline-{role}")
        assert deployment is not None, f"no Deployment for Procfile role {role!r}"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == shell_line(role), role


def test_every_deployment_has_probes_requests_settings_and_runs_as_non_root() -> None:
    parser = build_parser()
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        (container,) = pod["containers"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {
            "configMapRef": "imap-pipeline-config",
            "secretRef": "imap-pipeline-secrets",
        }, name
        for probe in ("livenessProbe", "readinessProbe"):
            assert probe in container, f"{name} has no {probe}"
            command = container[probe].get("exec", {}).get("command")
            if command:  # an exec probe is a real CLI command
                assert command[:2] == ["imap-pipeline", "health"], name
                parser.parse_args(command[1:])


def test_beat_has_a_standby_listener_scales_by_replicas_and_the_api_is_a_service() -> None:
    found = deployments()
    assert found["imap-pipeline-beat"]["spec"]["replicas"] == 2
    assert found["imap-pipeline-listener"]["spec"]["replicas"] >= 2
    services = {d["metadata"]["name"]: d for d in kustomize_base() if d["kind"] == "Service"}
    api = found["imap-pipeline-api"]["spec"]["template"]
    assert (
        services["imap-pipeline-api"]["spec"]["selector"].items()
        <= api["metadata"]["labels"].items()
    )
    (container,) = api["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_configmap_and_secret_hold_only_settings_that_exist() -> None:
    known = known_settings() | FOREIGN_VARIABLES
    for document in kustomize_base():
        if document["kind"] in ("ConfigMap", "Secret"):
            keys = set(document.get("data", {})) | set(document.get("stringData", {}))
            assert keys - known == set(), document["metadata"]["name"]
    secret = next(d for d in kustomize_base() if d["kind"] == "Secret")
    assert {"IMAP_PIPELINE_ENCRYPTION_KEYS", "IMAP_PIPELINE_API_KEYS"} <= set(secret["stringData"])


def test_compose_files_name_only_settings_that_exist() -> None:
    known = known_settings() | FOREIGN_VARIABLES | COMPOSE_VARIABLES
    text = (DEPLOY / "compose.yaml").read_text() + (DEPLOY / "compose.env.example").read_text()
    named = set(re.findall(r"\b((?:IMAP_PIPELINE|FLOWER|POSTGRES)_[A-Z_]+)", text))
    named -= {"POSTGRES_DB", "POSTGRES_USER"}  # the postgres image's own
    assert named - known == set()


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_builds_a_slim_python_image_that_runs_as_non_root() -> None:
    instructions = dockerfile()
    (base,) = [args for ins, args in instructions if ins == "FROM"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base)
    (user,) = [args for ins, args in instructions if ins == "USER"]
    assert user.split(":")[0] not in ("root", "0")


def test_dockerfile_copies_what_exists_and_defaults_to_the_procfile_api_command() -> None:
    instructions = dockerfile()
    for ins, args in instructions:
        if ins == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), source
    (cmd,) = [args for ins, args in instructions if ins == "CMD"]
    assert json.loads(cmd) == shell_line("api")


def test_every_role_in_a_container_listens_beyond_loopback() -> None:
    env = " ".join(args for ins, args in dockerfile() if ins == "ENV")
    assert "IMAP_PIPELINE_API_HOST=0.0.0.0" in env
    assert "IMAP_PIPELINE_FLOWER_HOST=0.0.0.0" in env
    assert "--address=${IMAP_PIPELINE_FLOWER_HOST:-127.0.0.1}" in PROCFILE["flower"]


# --- Grafana ----------------------------------------------------------------------------------


def test_grafana_dashboard_plots_every_metric_the_roles_export() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from pipeline import metrics

    dashboard = json.loads((DEPLOY / "grafana" / "imap-pipeline.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"\b(imap_pipeline_[a-z_]+?)(?:_total|_bucket|_count|_sum)?\b", exprs))
    exported = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)} | {
        "imap_pipeline_outbox_depth",
        "imap_pipeline_queue_depth",
    }  # BacklogCollector's
    assert used == exported
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_scrapes_a_port_each_pod_declares() -> None:
    for name, deployment in deployments().items():
        template = deployment["spec"]["template"]
        port = int(template["metadata"]["annotations"]["prometheus.io/port"])
        (container,) = template["spec"]["containers"]
        assert port in {p["containerPort"] for p in container["ports"]}, name
    configmap = next(d for d in kustomize_base() if d["kind"] == "ConfigMap")
    assert configmap["data"]["IMAP_PIPELINE_METRICS_PORT"] == "9100"
