"""The Pulumi stacks under Pulumi's mocks: what each environment declares, and the checks.

Every render here runs the real program (stacks/__main__.py and its components) in this
process under `pulumi.runtime.set_mocks`; the checks run the real kubernetes-validate.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
import pytest
import yaml
from click.testing import CliRunner

from cutover.actions.stack import run_stack, serving
from cutover.cli import main
from cutover.errors import InvalidInput, LockHeld, RunFailed
from cutover.estate import load_estate
from cutover.stacks import (
    ENGINE_MISSING,
    REDACTED,
    Engine,
    StackConfig,
    _engine_errors,
    check,
    image_tag,
    load_stack_config,
    parse_overrides,
    render,
    render_program,
    validate_schema,
    write_manifests,
)

ROOT = Path(__file__).resolve().parents[2]
ENVS = ("lab", "production")
NO_ENGINE = shutil.which("pulumi") is None and not (Path.home() / ".pulumi" / "bin" / "pulumi").exists()


CANARY = "canary-Zq8v1-do-not-leak"


@pytest.fixture(scope="module")
def rendered():
    with pytest.MonkeyPatch.context() as mp:
        # the secret config value the lab's in-cluster databases get: it must never be rendered
        mp.setenv("CUTOVER_DATABASE_PASSWORD", CANARY)
        return {env: render(ROOT, env) for env in ENVS}


@pytest.fixture(scope="module")
def estates():
    return {env: load_estate(ROOT / "inventories" / env) for env in ENVS}


# --- what each environment declares, per shared system --------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_every_shared_system_gets_its_namespace_workload_and_guards(env, rendered, estates):
    r, estate = rendered[env], estates[env]
    assert len(estate.systems) == 9
    for code in estate.systems:
        ns = f"cutover-{code}"
        namespace = r.find("Namespace", ns)
        assert namespace is not None, code
        labels = namespace.doc["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert labels["pod-security.kubernetes.io/warn"] == "restricted"
        deny = r.find("NetworkPolicy", "default-deny", ns)
        assert deny.doc["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        assert r.find("NetworkPolicy", "allow-dns", ns) is not None
        assert r.find("NetworkPolicy", "allow-app-ingress", ns) is not None
        for kind in ("ResourceQuota", "LimitRange"):
            assert len([m for m in r.manifests if m.kind == kind and m.namespace == ns]) == 1, (code, kind)
        for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
            assert r.find(kind, code, ns) is not None, (code, kind)
        assert r.find("ConfigMap", f"{code}-units", ns) is not None


@pytest.mark.parametrize("env", ENVS)
def test_resource_counts_per_kind(env, rendered):
    counts = {k: len(v) for k, v in rendered[env].by_kind().items()}
    systems = 9
    expected = {
        "Namespace": systems + 1,  # and the front door's
        "ResourceQuota": systems,
        "LimitRange": systems,
        "ConfigMap": systems,
        "Deployment": systems,
        "PodDisruptionBudget": systems,
        "HorizontalPodAutoscaler": systems,
        "Ingress": 1,
        # each system's Service, its data service's, and the front door's ExternalName
        "Service": 3 * systems,
    }
    if env == "lab":
        expected |= {"StatefulSet": systems, "Secret": systems}
    for kind, n in expected.items():
        assert counts.get(kind) == n, (kind, counts)
    if env == "production":
        assert "StatefulSet" not in counts and "Secret" not in counts


def test_lab_databases_are_statefulsets_and_production_ones_external(rendered):
    lab, prod = rendered["lab"], rendered["production"]
    sts = lab.find("StatefulSet", "docs-db", "cutover-docs")
    assert sts.doc["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert lab.find("Service", "docs-db", "cutover-docs").doc["spec"]["clusterIP"] == "None"
    assert lab.find("NetworkPolicy", "allow-database-ingress", "cutover-docs") is not None
    ext = prod.find("Service", "docs-db", "cutover-docs")
    assert ext.doc["spec"] == {"type": "ExternalName", "externalName": "unified-db-01.platform.invalid", "ports": [{"name": "postgresql", "port": 5432, "protocol": "TCP"}]}
    egress = prod.find("NetworkPolicy", "allow-app-egress", "cutover-docs").doc["spec"]["egress"]
    cidrs = [t["ipBlock"]["cidr"] for rule in egress for t in rule["to"] if "ipBlock" in t]
    assert cidrs == ["10.20.0.0/24", "10.30.0.0/24"]  # its database, then the document exchange


def test_calls_between_systems_are_allowed_both_ways(rendered):
    r = rendered["production"]
    egress = r.find("NetworkPolicy", "allow-app-egress", "cutover-docs").doc["spec"]["egress"]
    called = [t["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for rule in egress for t in rule["to"] if "namespaceSelector" in t]
    assert called == ["cutover-signatures", "cutover-identifiers"]
    ingress = r.find("NetworkPolicy", "allow-app-ingress", "cutover-identifiers").doc["spec"]["ingress"][0]["from"]
    sources = [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for f in ingress]
    assert sources == ["ingress-nginx", "cutover-docs", "cutover-hotline-1022", "cutover-procedures", "cutover-reporting"]


@pytest.mark.parametrize("env", ENVS)
def test_front_door_has_one_host_one_route_per_system_and_referenced_tls(env, rendered, estates):
    r = rendered[env]
    ingresses = r.by_kind()["Ingress"]
    assert len(ingresses) == 1
    spec = ingresses[0].doc["spec"]
    assert len(spec["rules"]) == 1
    host = spec["rules"][0]["host"]
    assert spec["tls"] == [{"hosts": [host], "secretName": "nentang-lab-tls" if env == "lab" else "nentang-tls"}]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in spec["rules"][0]["http"]["paths"]}
    assert paths == {f"/{code}": code for code in estates[env].systems}
    for code in estates[env].systems:
        svc = r.find("Service", code, "cutover-front-door")
        assert svc.doc["spec"]["externalName"] == f"{code}.cutover-{code}.svc.cluster.local"
    assert r.find("NetworkPolicy", "default-deny", "cutover-front-door") is not None


@pytest.mark.parametrize("env", ENVS)
def test_configmap_lists_every_unit_served(env, rendered, estates):
    cm = rendered[env].find("ConfigMap", "docs-units", "cutover-docs")
    rows = list(csv.DictReader(io.StringIO(cm.doc["data"]["units.csv"])))
    estate = estates[env]
    assert [r["code"] for r in rows] == list(estate.units)
    sai_gon = next(r for r in rows if r["code"] == "phuong-sai-gon")
    assert sai_gon["identifier_code"] == estate.units["phuong-sai-gon"].identifier_code
    assert sai_gon["name"] == "Sài Gòn"


def test_units_override_narrows_what_a_system_serves(rendered):
    r = render(ROOT, "lab", {"units": {"docs": ["phuong-sai-gon", "xa-tru-van-tho"]}})
    docs = r.find("ConfigMap", "docs-units", "cutover-docs")
    rows = list(csv.DictReader(io.StringIO(docs.doc["data"]["units.csv"])))
    assert [row["code"] for row in rows] == ["phuong-sai-gon", "xa-tru-van-tho"]
    video = r.find("ConfigMap", "video-units", "cutover-video")
    assert len(list(csv.DictReader(io.StringIO(video.doc["data"]["units.csv"])))) == 15
    # the pods roll when what they serve changes
    base = rendered["lab"].find("Deployment", "docs", "cutover-docs")
    digest = lambda m: m.doc["spec"]["template"]["metadata"]["annotations"]["cutover/units-digest"]  # noqa: E731
    assert digest(base) != digest(r.find("Deployment", "docs", "cutover-docs"))


def test_data_service_mode_is_chosen_per_system():
    stack = yaml.safe_load((ROOT / "stacks" / "Pulumi.production.yaml").read_text(encoding="utf-8"))
    systems = copy.deepcopy(stack["config"]["cutover-platform:systems"])
    systems["video"]["data"] = "none"
    r = render(ROOT, "production", {"systems": systems})
    assert r.find("Service", "video-db", "cutover-video") is None
    env = r.find("Deployment", "video", "cutover-video").doc["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not [e for e in env if e["name"].startswith("DATABASE_")]
    assert r.find("Service", "docs-db", "cutover-docs") is not None
    systems["video"]["data"] = "statefulset"  # production declares no in-cluster database settings
    with pytest.raises(InvalidInput) as err:
        render(ROOT, "production", {"systems": systems})
    assert [(p.where, p.message) for p in err.value.problems] == [("cutover-platform:systems.video.data", "data mode statefulset needs `data.statefulset` settings")]


def test_integral_floats_from_the_mocks_become_integers(rendered):
    d = rendered["production"].find("Deployment", "docs", "cutover-docs").doc
    assert d["spec"]["replicas"] == 4 and type(d["spec"]["replicas"]) is int
    port = d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert port == 8080 and type(port) is int
    hpa = rendered["production"].find("HorizontalPodAutoscaler", "docs", "cutover-docs").doc
    assert type(hpa["spec"]["maxReplicas"]) is int


def test_quota_is_sized_from_the_workloads(rendered):
    quota = rendered["production"].find("ResourceQuota", "quota", "cutover-docs").doc["spec"]["hard"]
    # docs: maxReplicas 12 + 1 surge pod, 500m/2 CPU and 1Gi/2Gi each
    assert quota["requests.cpu"] == "6500m" and quota["limits.cpu"] == "26"
    assert quota["requests.memory"] == "13Gi" and quota["limits.memory"] == "26Gi"
    assert quota["pods"] == "13"


def test_credentials_come_from_secrets_and_never_reach_a_manifest(rendered, tmp_path):
    r = rendered["lab"]
    secret = r.find("Secret", "docs-database", "cutover-docs")
    assert secret.secret_paths == ("stringData",)
    assert secret.doc["stringData"] == {"password": REDACTED, "username": REDACTED}
    assert secret.doc["metadata"]["annotations"]["cutover/redacted"] == "password,username"
    env = r.find("Deployment", "docs", "cutover-docs").doc["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["DATABASE_PASSWORD"] == {"name": "DATABASE_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "docs-database", "key": "password"}}}
    write_manifests(r, tmp_path / "out")
    for f in (tmp_path / "out").iterdir():
        assert CANARY not in f.read_text(encoding="utf-8"), f.name


# --- checks ----------------------------------------------------------------------------------


def test_production_passes_strict_schema_validation_and_every_policy(rendered):
    report = check(rendered["production"], "1.33")
    assert report.passed, [str(v) for v in report.violations]
    assert report.manifests == len(rendered["production"].manifests) >= 100
    for m in rendered["production"].manifests:
        assert validate_schema(m, "1.33") == []


def test_lab_passes_on_the_newest_bundled_schema(rendered):
    report = check(rendered["lab"], "1.37")
    assert report.passed, [str(v) for v in report.violations]


def test_unknown_kubernetes_version_is_invalid_input(rendered):
    with pytest.raises(InvalidInput, match="unsupported Kubernetes version"):
        check(rendered["lab"], "1.99")


GOOD_CONTAINER = {
    "name": "app",
    "image": "registry.test.invalid/app:1.2.3",
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}},
    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}},
    "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    "env": [{"name": "MODE", "value": "test"}],
}


class BentWorkload(pulumi.ComponentResource):
    """A test component: a namespace with default-deny and one Deployment, bent as told."""

    def __init__(self, name: str, container: dict, *, deny: bool = True, spec_extra: dict | None = None, env_secret: bool = False):
        super().__init__("cutover:test:Workload", name, None, None)
        child = pulumi.ResourceOptions(parent=self)
        k8s.core.v1.Namespace(name, metadata={"name": name}, opts=child)
        if deny:
            k8s.networking.v1.NetworkPolicy(f"{name}/deny", metadata={"name": "default-deny", "namespace": name}, spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, opts=child)
        container = copy.deepcopy(container)
        if env_secret:
            container["env"] = [{"name": "UPSTREAM", "value": pulumi.Config("cutover-platform").require_secret("databasePassword")}]
        spec = {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}
        spec |= spec_extra or {}
        k8s.apps.v1.Deployment(f"{name}/app", metadata={"name": "app", "namespace": name}, spec=spec, opts=child)
        self.register_outputs({})


def _bent(**changes):
    c = copy.deepcopy(GOOD_CONTAINER)
    for key, value in changes.items():
        if value is None:
            c.pop(key, None)
        else:
            c[key] = value
    return c


SECRET_CONFIG = StackConfig(env="test", values={"cutover-platform:databasePassword": "s3cr3t-value"}, secret_keys=frozenset({"cutover-platform:databasePassword"}), secret_values=frozenset({"s3cr3t-value"}))
C0 = "spec.template.spec.containers[0]"

# (test component, expected (rule, field) reported for Deployment <ns>/app)
VIOLATIONS = {
    "no-limits": (dict(container=_bent(resources={"requests": {"cpu": "100m", "memory": "128Mi"}})), [("limits", f"{C0}.resources.limits.cpu"), ("limits", f"{C0}.resources.limits.memory")]),
    "no-requests": (dict(container=_bent(resources=None)), [("limits", f"{C0}.resources.requests.cpu"), ("limits", f"{C0}.resources.requests.memory"), ("limits", f"{C0}.resources.limits.cpu"), ("limits", f"{C0}.resources.limits.memory")]),
    "no-liveness": (dict(container=_bent(livenessProbe=None)), [("probes", f"{C0}.livenessProbe")]),
    "no-readiness": (dict(container=_bent(readinessProbe=None)), [("probes", f"{C0}.readinessProbe")]),
    "may-be-root": (dict(container=_bent(securityContext={"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False})), [("non-root", f"{C0}.securityContext.runAsNonRoot")]),
    "runs-as-root": (dict(container=_bent(securityContext={**GOOD_CONTAINER["securityContext"], "runAsUser": 0})), [("non-root", f"{C0}.securityContext.runAsUser")]),
    "writable-root": (dict(container=_bent(securityContext={"runAsNonRoot": True, "allowPrivilegeEscalation": False})), [("non-root", f"{C0}.securityContext.readOnlyRootFilesystem")]),
    "escalates": (dict(container=_bent(securityContext={"runAsNonRoot": True, "readOnlyRootFilesystem": True})), [("non-root", f"{C0}.securityContext.allowPrivilegeEscalation")]),
    "latest-tag": (dict(container=_bent(image="registry.test.invalid/app:latest")), [("pinned-image", f"{C0}.image")]),
    "untagged": (dict(container=_bent(image="registry.test.invalid:5000/app")), [("pinned-image", f"{C0}.image")]),
    "literal-password": (dict(container=_bent(env=[{"name": "DATABASE_PASSWORD", "value": "hunter2"}])), [("secret-in-env", f"{C0}.env[0].value")]),
    "secret-inlined": (dict(container=GOOD_CONTAINER, env_secret=True), [("secret-in-env", f"{C0}.env[0].value")]),
    "typo-in-spec": (dict(container=GOOD_CONTAINER, spec_extra={"replica": 2}), [("schema", "spec")]),
}


def test_a_good_test_component_has_no_violations():
    r = render_program(lambda: BentWorkload("good", GOOD_CONTAINER), env="test")
    assert [m.label for m in r.manifests] == ["Namespace good", "NetworkPolicy good/default-deny", "Deployment good/app"]
    assert check(r).violations == []


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_each_policy_violated_on_purpose_is_reported(case):
    kwargs, expected = VIOLATIONS[case]
    r = render_program(lambda: BentWorkload(case, **kwargs), env="test", config=SECRET_CONFIG)
    report = check(r)
    got = [(v.rule, v.field) for v in report.violations]
    assert got == expected, [str(v) for v in report.violations]
    assert {v.resource for v in report.violations} == {f"Deployment {case}/app"}


def test_schema_violation_names_the_field():
    r = render_program(lambda: BentWorkload("typo", GOOD_CONTAINER, spec_extra={"replica": 2}), env="test")
    (v,) = check(r).violations
    assert "replica" in v.message and "1.33" in v.message


def test_inlined_secret_is_redacted_in_the_manifest():
    r = render_program(lambda: BentWorkload("leak", GOOD_CONTAINER, env_secret=True), env="test", config=SECRET_CONFIG)
    d = r.find("Deployment", "app", "leak")
    assert d.leaks == (f"{C0}.env[0].value",)
    assert "s3cr3t-value" not in yaml.safe_dump(d.doc)


def test_namespace_without_default_deny_is_reported():
    def program():
        BentWorkload("open", GOOD_CONTAINER, deny=False)
        # a policy that selects some pods or allows something is not a default deny
        k8s.networking.v1.NetworkPolicy("partial", metadata={"name": "partial", "namespace": "open"}, spec={"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Ingress", "Egress"]})
        k8s.core.v1.ConfigMap("stray", metadata={"name": "stray", "namespace": "elsewhere"}, data={"a": "b"})

    report = check(render_program(program, env="test"))
    assert [(v.rule, v.resource, v.field) for v in report.violations] == [
        ("default-deny", "Namespace elsewhere", "NetworkPolicy"),
        ("default-deny", "Namespace open", "NetworkPolicy"),
    ]


def test_image_tags():
    assert image_tag("registry.invalid:5000/a/b:1.2") == ("1.2", None)
    assert image_tag("registry.invalid:5000/a/b") == (None, None)
    assert image_tag("b@sha256:" + "0" * 64) == (None, "sha256:" + "0" * 64)


# --- configuration ---------------------------------------------------------------------------


def test_config_problems_are_reported_with_their_key_paths():
    stack = yaml.safe_load((ROOT / "stacks" / "Pulumi.production.yaml").read_text(encoding="utf-8"))
    systems = copy.deepcopy(stack["config"]["cutover-platform:systems"])
    systems["docs"]["image"]["tag"] = "latest"
    systems["video"]["minReplicas"] = 9
    del systems["mail"]
    systems["fax"] = systems["reporting"]
    with pytest.raises(InvalidInput) as err:
        render(ROOT, "production", {"systems": systems, "units": {"docs": ["phuong-khong-co"]}})
    where = {(p.where, p.message.split(":")[0]) for p in err.value.problems}
    assert ("cutover-platform:systems.docs.image.tag", "the tag `latest` is not pinned") in where
    assert any(w == "cutover-platform:systems.video" and "minReplicas 9" in m for w, m in where)
    assert err.value.problems[0].file == "stacks/Pulumi.production.yaml"


def test_estate_cross_checks_are_reported_together():
    stack = yaml.safe_load((ROOT / "stacks" / "Pulumi.production.yaml").read_text(encoding="utf-8"))
    systems = copy.deepcopy(stack["config"]["cutover-platform:systems"])
    del systems["mail"]
    systems["fax"] = systems["reporting"]
    with pytest.raises(InvalidInput) as err:
        render(ROOT, "production", {"systems": systems, "units": {"docs": ["phuong-khong-co"]}})
    messages = [str(p) for p in err.value.problems]
    assert any("'mail' of the estate has no settings" in m for m in messages)
    assert any("unknown shared system 'fax'" in m for m in messages)
    assert any("units.docs[0]" in m and "unknown unit 'phuong-khong-co'" in m for m in messages)


def test_unknown_config_keys_and_stacks_are_invalid_input():
    with pytest.raises(InvalidInput, match="unknown key"):
        load_stack_config(ROOT, "lab", {"replicaz": 3})
    with pytest.raises(InvalidInput, match=r"no stack 'staging' \(known: lab, production\)"):
        load_stack_config(ROOT, "staging")


def test_project_declares_its_config_keys_with_descriptions_and_marks_secrets():
    project = yaml.safe_load((ROOT / "stacks" / "Pulumi.yaml").read_text(encoding="utf-8"))
    config = project["config"]
    assert all(decl.get("description") for decl in config.values())
    assert [k for k, d in config.items() if d.get("secret")] == ["databasePassword"]
    for env in ENVS:
        stack = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{env}.yaml").read_text(encoding="utf-8"))
        assert "cutover-platform:databasePassword" not in stack["config"]  # never in plain text


def test_parse_overrides():
    assert parse_overrides(["units={docs: [a, b]}", "host=x.invalid", "disruptionBudgetMinAvailable=2"]) == {"units": {"docs": ["a", "b"]}, "host": "x.invalid", "disruptionBudgetMinAvailable": 2}
    with pytest.raises(InvalidInput):
        parse_overrides(["novalue"])


# --- rendering to files ----------------------------------------------------------------------


def test_render_writes_one_file_per_resource_and_a_kustomization(rendered, tmp_path):
    out = tmp_path / "manifests"
    files = write_manifests(rendered["production"], out)
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text(encoding="utf-8"))
    on_disk = sorted(p.name for p in out.iterdir() if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == on_disk
    assert len(on_disk) == len(rendered["production"].manifests) == len(files) - 1
    doc = yaml.safe_load((out / "deployment--cutover-docs--docs.yaml").read_text(encoding="utf-8"))
    assert doc["kind"] == "Deployment" and doc["spec"]["replicas"] == 4
    # a second render replaces the first; a folder with other content is refused
    write_manifests(rendered["lab"], out)
    assert (out / "statefulset--cutover-docs--docs-db.yaml").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="not a previous render"):
        write_manifests(rendered["lab"], other)
    assert (other / "notes.txt").read_text() == "keep me"


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_production_check_exits_0():
    result = CliRunner().invoke(main, ["--root", str(ROOT), "--env", "production", "stack", "check"])
    assert result.exit_code == 0, result.output
    assert "pass strict schema validation" in result.output


def _project_copy(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(ROOT / "stacks", root / "stacks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "inventories", root / "inventories")
    return root


def test_cli_check_lists_each_violation_and_exits_1(tmp_path):
    root = _project_copy(tmp_path)
    component = root / "stacks" / "components" / "shared_system.py"
    text = component.read_text(encoding="utf-8")
    bent = text.replace('"readinessProbe": probe(s.readiness_path, 5),', "").replace('"readOnlyRootFilesystem": True,', '"readOnlyRootFilesystem": False,')
    assert bent != text
    component.write_text(bent, encoding="utf-8")
    result = CliRunner().invoke(main, ["--root", str(root), "--env", "production", "--output", "json", "stack", "check"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["passed"] is False
    got = {(v["rule"], v["resource"], v["field"]) for v in report["violations"]}
    expected = set()
    for code in load_estate(ROOT / "inventories" / "production").systems:
        res = f"Deployment cutover-{code}/{code}"
        expected |= {("probes", res, f"{C0}.readinessProbe"), ("non-root", res, f"{C0}.securityContext.readOnlyRootFilesystem")}
    assert got == expected
    # the project under ROOT is unaffected by the bent copy rendered in the same process
    assert check(render(ROOT, "production")).passed


def test_cli_invalid_config_override_exits_2():
    result = CliRunner().invoke(main, ["--root", str(ROOT), "--env", "lab", "stack", "check", "--config", "ingressControllerNamespace=Not_A_Label"])
    assert result.exit_code == 2, result.output
    assert "cutover-platform:ingressControllerNamespace" in result.output


def test_cli_render_json(tmp_path):
    result = CliRunner().invoke(main, ["--root", str(ROOT), "--env", "lab", "--output", "json", "stack", "render", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert '"manifests": 157' in result.output


@pytest.mark.skipif(not NO_ENGINE, reason="a pulumi binary is installed here: the engine path is exercised by tests/integration/test_stack_preview.py")
@pytest.mark.parametrize("command", [["preview"], ["up"], ["refresh"], ["outputs"], ["destroy", "--yes"]])
def test_cli_without_engine_exits_2_with_an_install_hint(command):
    result = CliRunner().invoke(main, ["--root", str(ROOT), "--env", "production", "stack", *command])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {ENGINE_MISSING}"]


def test_cli_destroy_needs_yes():
    result = CliRunner().invoke(main, ["--root", str(ROOT), "--env", "lab", "stack", "destroy"])
    assert result.exit_code == 2 and "--yes" in result.output


# --- the runbook action and the engine's errors ----------------------------------------------


@pytest.mark.skipif(not NO_ENGINE, reason="a pulumi binary is installed here")
def test_stack_action_refuses_without_an_engine(tmp_path):
    with pytest.raises(InvalidInput) as err:
        run_stack("lab", {"units": {"docs": ["phuong-sai-gon"]}}, root=ROOT, work_dir=tmp_path)
    assert str(err.value) == ENGINE_MISSING


def test_serving_adds_units_without_repeats():
    config = serving({"units": {"docs": ["phuong-sai-gon"]}, "host": "x"}, ["docs", "procedures"], ["phuong-sai-gon", "xa-bau-bang"])
    assert config == {"units": {"docs": ["phuong-sai-gon", "xa-bau-bang"], "procedures": ["phuong-sai-gon", "xa-bau-bang"]}, "host": "x"}


def test_engine_errors_become_exit_codes():
    from pulumi import automation as auto
    from pulumi.automation._cmd import CommandResult

    with pytest.raises(LockHeld, match="being updated by another run"):
        with _engine_errors("lab"):
            raise auto.ConcurrentUpdateError(CommandResult(stdout="", stderr="error: the stack is currently locked by 1 lock(s)", code=255))
    with pytest.raises(RunFailed, match="boom"):
        with _engine_errors("lab"):
            raise auto.CommandError(CommandResult(stdout="", stderr="error: boom", code=255))
    with pytest.raises(InvalidInput, match="no Pulumi engine"):
        with _engine_errors("lab"):
            raise FileNotFoundError(2, "No such file or directory", "pulumi")


def test_engine_overrides_go_to_a_config_file_under_the_work_dir(tmp_path):
    engine = Engine(root=ROOT, env="lab", work_dir=tmp_path, overrides={"units": {"docs": ["phuong-sai-gon"]}})
    path = Path(engine._config_file())
    assert path.parent == tmp_path / "stacks" / "lab"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["config"]["cutover-platform:units"] == {"docs": ["phuong-sai-gon"]}
    assert data["config"]["cutover-platform:host"] == "nentang.lab.invalid"
    assert Engine(root=ROOT, env="lab", work_dir=tmp_path)._config_file() is None


# --- CI templates ----------------------------------------------------------------------------


def test_ci_templates_check_preview_and_publish_on_review_and_up_on_main():
    gh = yaml.safe_load((ROOT / "ci" / "github-actions.yml").read_text(encoding="utf-8"))
    triggers = gh[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"pull_request", "push"} and triggers["push"]["branches"] == ["main"]
    runs = {job: " ".join(step.get("run", "") for step in spec["steps"]) for job, spec in gh["jobs"].items()}
    assert "stack check" in runs["check"] and "--out manifests/" in runs["check"]
    assert any(step.get("uses", "").startswith("actions/upload-artifact") and step["with"]["path"] == "manifests/" for step in gh["jobs"]["check"]["steps"])
    assert "stack preview" in runs["preview"] and gh["jobs"]["preview"]["if"] == "github.event_name == 'pull_request'"
    assert "stack up" in runs["up"] and "refs/heads/main" in gh["jobs"]["up"]["if"]

    gl = yaml.safe_load((ROOT / "ci" / "gitlab-ci.yml").read_text(encoding="utf-8"))
    script = lambda job: " ".join(gl[job]["script"])  # noqa: E731
    conditions = lambda job: [r["if"] for r in gl[job]["rules"]]  # noqa: E731
    assert "stack check" in script("stack:check") and gl["stack:check"]["artifacts"]["paths"] == ["manifests/"]
    assert '$CI_PIPELINE_SOURCE == "merge_request_event"' in conditions("stack:check")
    assert "stack preview" in script("stack:preview") and conditions("stack:preview") == ['$CI_PIPELINE_SOURCE == "merge_request_event"']
    assert "stack up" in script("stack:up") and conditions("stack:up") == ["$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"]
    assert gl["stack:up"]["resource_group"] == "stack-production"
