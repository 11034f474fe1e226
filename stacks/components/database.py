"""A shared system's data service: an external endpoint, or a PostgreSQL StatefulSet.

Either way the applications reach it by the same name, `<system>-db`, and read their
credentials from the Secret `<system>-database` (keys `username`, `password`). With external
data services that Secret is provisioned by the data centre and only referenced here; with
in-cluster StatefulSets the stack creates it from the secret config key `databasePassword`.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.labels import DATABASE, labels, selector
from components.platform import DATABASE_PORT
from components.settings import PROJECT, StackSettings


def credentials_secret(system: str) -> str:
    return f"{system}-database"


def service_name(system: str) -> str:
    return f"{system}-db"


class Database(pulumi.ComponentResource):
    def __init__(self, system: str, settings: StackSettings, database_name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("cutover:platform:Database", system, None, opts)
        ns = settings.namespace(system)
        child = pulumi.ResourceOptions(parent=self)
        name = service_name(system)
        self.host = f"{name}.{ns}.svc.cluster.local"
        self.port = DATABASE_PORT
        mode = settings.data_mode(system)
        if mode == "external":
            ext = settings.data.external
            assert ext is not None  # checked by DataServices
            self.port = ext.port
            k8s.core.v1.Service(
                f"{ns}/{name}",
                metadata={"name": name, "namespace": ns, "labels": selector(system, DATABASE)},
                spec={"type": "ExternalName", "externalName": ext.host, "ports": [{"name": "postgresql", "port": ext.port, "protocol": "TCP"}]},
                opts=child,
            )
        else:
            self._statefulset(system, settings, database_name, child)
        self.register_outputs({"host": self.host, "mode": mode})

    def _statefulset(self, system: str, settings: StackSettings, database_name: str, child: pulumi.ResourceOptions) -> None:
        db = settings.data.statefulset
        assert db is not None  # checked by DataServices
        ns = settings.namespace(system)
        name = service_name(system)
        match = selector(system, DATABASE)
        meta_labels = labels(system, DATABASE, db.image.tag)
        password = pulumi.Config(PROJECT).require_secret("databasePassword")
        secret = k8s.core.v1.Secret(
            f"{ns}/{credentials_secret(system)}",
            metadata={"name": credentials_secret(system), "namespace": ns, "labels": meta_labels},
            type="Opaque",
            string_data={"username": database_name, "password": password},
            opts=child,
        )
        k8s.core.v1.Service(
            f"{ns}/{name}",
            metadata={"name": name, "namespace": ns, "labels": meta_labels},
            spec={"clusterIP": "None", "selector": match, "ports": [{"name": "postgresql", "port": DATABASE_PORT, "targetPort": "postgresql", "protocol": "TCP"}]},
            opts=child,
        )
        from_secret = lambda key: {"secretKeyRef": {"name": credentials_secret(system), "key": key}}  # noqa: E731
        probe = {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-p", str(DATABASE_PORT)]}, "periodSeconds": 10, "timeoutSeconds": 5}
        claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": db.storage}}}
        if db.storage_class:
            claim["storageClassName"] = db.storage_class
        k8s.apps.v1.StatefulSet(
            f"{ns}/{name}",
            metadata={"name": name, "namespace": ns, "labels": meta_labels},
            spec={
                "serviceName": name,
                "replicas": 1,
                "selector": {"matchLabels": match},
                "template": {
                    "metadata": {"labels": meta_labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": db.run_as_user,
                            "runAsGroup": db.run_as_user,
                            "fsGroup": db.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "postgresql",
                                "image": db.image.reference,
                                "ports": [{"name": "postgresql", "containerPort": DATABASE_PORT, "protocol": "TCP"}],
                                "env": [
                                    {"name": "POSTGRES_DB", "value": database_name},
                                    {"name": "POSTGRES_USER", "valueFrom": from_secret("username")},
                                    {"name": "POSTGRES_PASSWORD", "valueFrom": from_secret("password")},
                                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                                ],
                                "resources": db.resources.as_kubernetes(),
                                "livenessProbe": {**probe, "initialDelaySeconds": 30},
                                "readinessProbe": {**probe, "initialDelaySeconds": 5},
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                    {"name": "run", "mountPath": "/var/run/postgresql"},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [{"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}, {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
                    },
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": match}, "spec": claim}],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[secret]),
        )
