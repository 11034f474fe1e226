"""One shared system on the unified platform: its application and everything around it.

A Deployment (requests and limits, liveness and readiness probes, non-root read-only
container, pinned image), a Service, a PodDisruptionBudget, a HorizontalPodAutoscaler, a
ConfigMap with the units it serves (and the system's own declaration from the estate), and its
data service (see `database.py`). Credentials are read from Secrets, never inlined.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pulumi
import pulumi_kubernetes as k8s

from components.database import Database, credentials_secret
from components.labels import APP, labels, selector
from components.settings import StackSettings

CONFIG_DIR = "/etc/cutover"
UNITS_COLUMNS = ("code", "name", "kind", "province", "identifier_code", "legacy_site")


def units_csv(units: list) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(UNITS_COLUMNS)
    for u in units:
        writer.writerow([u.code, u.name, u.kind, u.province, u.identifier_code, u.site])
    return out.getvalue()


class SharedSystemService(pulumi.ComponentResource):
    def __init__(self, system, settings: StackSettings, units: list, opts: pulumi.ResourceOptions | None = None):
        """`system` is the estate's SharedSystem; `units` the estate Units it serves."""
        super().__init__("cutover:platform:SharedSystem", system.code, None, opts)
        code = system.code
        s = settings.systems[code]
        ns = settings.namespace(code)
        child = pulumi.ResourceOptions(parent=self)
        match = selector(code, APP)
        meta_labels = labels(code, APP, s.image.tag)
        database_name = s.database_name or code.replace("-", "_")

        config_data = {
            "units.csv": units_csv(units),
            "system.json": json.dumps(
                {
                    "code": code,
                    "name_vi": system.name_vi,
                    "name_en": system.name_en,
                    "legacy_sites": list(system.legacy_sites),
                    "tables": list(system.data.tables),
                    "file_stores": list(system.data.file_stores),
                    "route": settings.route(code),
                    "units": len(units),
                },
                ensure_ascii=False,
                indent=2,
                sort_keys=True,
            ),
        }
        digest = hashlib.sha256(json.dumps(config_data, sort_keys=True).encode()).hexdigest()[:16]
        config_map = k8s.core.v1.ConfigMap(
            f"{ns}/{code}-units",
            metadata={"name": f"{code}-units", "namespace": ns, "labels": meta_labels},
            data=config_data,
            opts=child,
        )

        env: list[dict] = [
            {"name": "CUTOVER_SYSTEM", "value": code},
            {"name": "CUTOVER_UNITS_FILE", "value": f"{CONFIG_DIR}/units.csv"},
            {"name": "HTTP_PORT", "value": str(s.port)},
            {"name": "PUBLIC_URL", "value": f"https://{settings.host}{settings.route(code)}"},
        ]
        depends = [config_map]
        mode = settings.data_mode(code)
        if mode != "none":
            db = Database(code, settings, database_name, opts=child)
            depends.append(db)
            secret_ref = lambda key: {"secretKeyRef": {"name": credentials_secret(code), "key": key}}  # noqa: E731
            env += [
                {"name": "DATABASE_HOST", "value": db.host},
                {"name": "DATABASE_PORT", "value": str(db.port)},
                {"name": "DATABASE_NAME", "value": database_name},
                {"name": "DATABASE_USER", "valueFrom": secret_ref("username")},
                {"name": "DATABASE_PASSWORD", "valueFrom": secret_ref("password")},
            ]
        for called in s.calls:
            env.append({"name": f"{called.upper().replace('-', '_')}_URL", "value": f"http://{called}.{settings.namespace(called)}.svc.cluster.local"})

        probe = lambda path, delay: {  # noqa: E731
            "httpGet": {"path": path, "port": "http"},
            "initialDelaySeconds": delay,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        }
        self.deployment = k8s.apps.v1.Deployment(
            f"{ns}/{code}",
            metadata={"name": code, "namespace": ns, "labels": meta_labels},
            spec={
                "replicas": s.replicas,
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": match},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": meta_labels, "annotations": {"cutover/units-digest": digest}},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "runAsGroup": 10001,
                            "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "topologySpreadConstraints": [
                            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": match}}
                        ],
                        "containers": [
                            {
                                "name": code,
                                "image": s.image.reference,
                                "imagePullPolicy": "IfNotPresent",
                                "ports": [{"name": "http", "containerPort": s.port, "protocol": "TCP"}],
                                "env": env,
                                "resources": s.resources.as_kubernetes(),
                                "livenessProbe": probe(s.liveness_path, 20),
                                "readinessProbe": probe(s.readiness_path, 5),
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {"name": "units", "mountPath": CONFIG_DIR, "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "units", "configMap": {"name": f"{code}-units"}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "128Mi"}},
                        ],
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends),
        )
        k8s.core.v1.Service(
            f"{ns}/{code}",
            metadata={"name": code, "namespace": ns, "labels": meta_labels},
            spec={"type": "ClusterIP", "selector": match, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
            opts=child,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{ns}/{code}",
            metadata={"name": code, "namespace": ns, "labels": meta_labels},
            spec={"minAvailable": min(settings.disruption_budget_min_available, s.min_replicas - 1), "selector": {"matchLabels": match}},
            opts=child,
        )
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{ns}/{code}",
            metadata={"name": code, "namespace": ns, "labels": meta_labels},
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": code},
                "minReplicas": s.min_replicas,
                "maxReplicas": s.max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": s.target_cpu_percent}}}],
            },
            opts=child,
        )
        self.units = [u.code for u in units]
        self.register_outputs({"namespace": ns, "units": len(units), "image": s.image.reference})
