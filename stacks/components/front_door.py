"""The front door: one host for the unified interface, one route per shared system.

An Ingress in the front door's namespace terminates TLS with a referenced Secret (issued and
renewed outside this stack: the stack never holds the key) and routes `/<system>` to an
ExternalName Service that names the system's own Service in its namespace.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.settings import StackSettings


class FrontDoor(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, systems: list[str], opts: pulumi.ResourceOptions | None = None):
        super().__init__("cutover:platform:FrontDoor", name, None, opts)
        ns = settings.front_door_namespace
        child = pulumi.ResourceOptions(parent=self)
        paths = []
        for code in systems:
            k8s.core.v1.Service(
                f"{ns}/{code}",
                metadata={"name": code, "namespace": ns, "labels": {"app.kubernetes.io/part-of": "cutover", "cutover/system": code}},
                spec={
                    "type": "ExternalName",
                    "externalName": f"{code}.{settings.namespace(code)}.svc.cluster.local",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                },
                opts=child,
            )
            paths.append({"path": settings.route(code), "pathType": "Prefix", "backend": {"service": {"name": code, "port": {"name": "http"}}}})
        self.ingress = k8s.networking.v1.Ingress(
            f"{ns}/front-door",
            metadata={
                "name": "front-door",
                "namespace": ns,
                "labels": {"app.kubernetes.io/part-of": "cutover"},
                "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "true"},
            },
            spec={
                "ingressClassName": settings.ingress_class,
                "tls": [{"hosts": [settings.host], "secretName": settings.tls_secret}],
                "rules": [{"host": settings.host, "http": {"paths": paths}}],
            },
            opts=child,
        )
        self.url = f"https://{settings.host}"
        self.register_outputs({"url": self.url})
