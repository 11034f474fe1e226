"""The platform: one namespace per shared system (and one for the front door), secure by default.

Each namespace gets the `restricted` Pod Security level (enforced, audited, warned), a
default-deny NetworkPolicy for ingress and egress, the explicit allows its system needs
(DNS, the front door's ingress controller, its database, the systems it calls or that call
it, declared outside addresses), a ResourceQuota sized from its workloads and a LimitRange.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.labels import APP, DATABASE, selector
from components.settings import (
    StackSettings,
    cpu_millis,
    mebibytes_to_memory,
    memory_mebibytes,
    millis_to_cpu,
)

POD_SECURITY = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
} | {f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "audit", "warn")}

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
DATABASE_PORT = 5432


@dataclass(frozen=True)
class NamespaceBudget:
    """What a namespace's quota and limit range allow, summed from its workloads."""

    cpu_request_millis: int
    cpu_limit_millis: int
    memory_request_mib: int
    memory_limit_mib: int
    pods: int
    max_container_cpu_millis: int
    max_container_memory_mib: int
    default_cpu: tuple[str, str]  # request, limit
    default_memory: tuple[str, str]
    claims: int


def budget_for(settings: StackSettings, system: str) -> NamespaceBudget:
    s = settings.systems[system]
    # Room for the autoscaler's ceiling plus one surge pod of a rolling update.
    app_pods = s.max_replicas + 1
    r = s.resources
    cpu_req, cpu_lim = cpu_millis(r.cpu_request) * app_pods, cpu_millis(r.cpu_limit) * app_pods
    mem_req, mem_lim = memory_mebibytes(r.memory_request) * app_pods, memory_mebibytes(r.memory_limit) * app_pods
    max_cpu, max_mem = cpu_millis(r.cpu_limit), memory_mebibytes(r.memory_limit)
    pods, claims = app_pods, 0
    if settings.data_mode(system) == "statefulset" and settings.data.statefulset:
        d = settings.data.statefulset.resources
        cpu_req += cpu_millis(d.cpu_request)
        cpu_lim += cpu_millis(d.cpu_limit)
        mem_req += memory_mebibytes(d.memory_request)
        mem_lim += memory_mebibytes(d.memory_limit)
        max_cpu, max_mem = max(max_cpu, cpu_millis(d.cpu_limit)), max(max_mem, memory_mebibytes(d.memory_limit))
        pods += 1
        claims += 1
    return NamespaceBudget(
        cpu_request_millis=cpu_req,
        cpu_limit_millis=cpu_lim,
        memory_request_mib=mem_req,
        memory_limit_mib=mem_lim,
        pods=pods,
        max_container_cpu_millis=max_cpu,
        max_container_memory_mib=max_mem,
        default_cpu=(r.cpu_request, r.cpu_limit),
        default_memory=(r.memory_request, r.memory_limit),
        claims=claims,
    )


class SystemNamespace(pulumi.ComponentResource):
    """A namespace with restricted Pod Security, default-deny networking, quota and limits."""

    def __init__(self, name: str, *, namespace: str, budget: NamespaceBudget | None, part_of: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("cutover:platform:SystemNamespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.name = namespace
        self.namespace = k8s.core.v1.Namespace(
            f"{namespace}",
            metadata={"name": namespace, "labels": {**POD_SECURITY, "app.kubernetes.io/part-of": "cutover", "cutover/system": part_of}},
            opts=child,
        )
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])
        self._in_namespace = in_ns
        self.policy(
            "default-deny",
            {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        )
        self.policy(
            "allow-dns",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    }
                ],
            },
        )
        if budget is not None:
            k8s.core.v1.ResourceQuota(
                f"{namespace}/quota",
                metadata={"name": "quota", "namespace": namespace},
                spec={
                    "hard": {
                        "requests.cpu": millis_to_cpu(budget.cpu_request_millis),
                        "requests.memory": mebibytes_to_memory(budget.memory_request_mib),
                        "limits.cpu": millis_to_cpu(budget.cpu_limit_millis),
                        "limits.memory": mebibytes_to_memory(budget.memory_limit_mib),
                        "pods": str(budget.pods),
                        "persistentvolumeclaims": str(budget.claims),
                        "services.loadbalancers": "0",
                        "services.nodeports": "0",
                    }
                },
                opts=in_ns,
            )
            k8s.core.v1.LimitRange(
                f"{namespace}/limits",
                metadata={"name": "limits", "namespace": namespace},
                spec={
                    "limits": [
                        {
                            "type": "Container",
                            "defaultRequest": {"cpu": budget.default_cpu[0], "memory": budget.default_memory[0]},
                            "default": {"cpu": budget.default_cpu[1], "memory": budget.default_memory[1]},
                            "max": {"cpu": millis_to_cpu(budget.max_container_cpu_millis), "memory": mebibytes_to_memory(budget.max_container_memory_mib)},
                        }
                    ]
                },
                opts=in_ns,
            )
        self.register_outputs({"name": namespace})

    def policy(self, name: str, spec: dict) -> k8s.networking.v1.NetworkPolicy:
        return k8s.networking.v1.NetworkPolicy(
            f"{self.name}/{name}",
            metadata={"name": name, "namespace": self.name},
            spec=spec,
            opts=self._in_namespace,
        )


class Platform(pulumi.ComponentResource):
    """Every system's namespace and the allows between them, plus the front door's namespace."""

    def __init__(self, name: str, settings: StackSettings, systems: list[str], opts: pulumi.ResourceOptions | None = None):
        super().__init__("cutover:platform:Platform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.namespaces: dict[str, SystemNamespace] = {}
        self.front_door = SystemNamespace("front-door", namespace=settings.front_door_namespace, budget=None, part_of="front-door", opts=child)
        for code in systems:
            self.namespaces[code] = SystemNamespace(code, namespace=settings.namespace(code), budget=budget_for(settings, code), part_of=code, opts=child)
        callers: dict[str, list[str]] = {code: [] for code in systems}
        for code in systems:
            for called in settings.systems[code].calls:
                callers[called].append(code)
        for code in systems:
            self._allows(settings, code, callers[code])
        self.register_outputs({"namespaces": {c: ns.name for c, ns in self.namespaces.items()}})

    def _allows(self, settings: StackSettings, code: str, callers: list[str]) -> None:
        s = settings.systems[code]
        ns = self.namespaces[code]
        app = selector(code, APP)
        http = [{"protocol": "TCP", "port": s.port}]
        ingress_from = [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.ingress_controller_namespace}}}]
        ingress_from += [
            {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.namespace(c)}}, "podSelector": {"matchLabels": selector(c, APP)}}
            for c in sorted(callers)
        ]
        ns.policy("allow-app-ingress", {"podSelector": {"matchLabels": app}, "policyTypes": ["Ingress"], "ingress": [{"from": ingress_from, "ports": http}]})
        egress: list[dict] = [
            {
                "to": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.namespace(c)}}, "podSelector": {"matchLabels": selector(c, APP)}}],
                "ports": [{"protocol": "TCP", "port": settings.systems[c].port}],
            }
            for c in s.calls
        ]
        mode = settings.data_mode(code)
        if mode == "statefulset":
            db = selector(code, DATABASE)
            egress.append({"to": [{"podSelector": {"matchLabels": db}}], "ports": [{"protocol": "TCP", "port": DATABASE_PORT}]})
            ns.policy(
                "allow-database-ingress",
                {"podSelector": {"matchLabels": db}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {"matchLabels": app}}], "ports": [{"protocol": "TCP", "port": DATABASE_PORT}]}]},
            )
        elif mode == "external" and settings.data.external:
            ext = settings.data.external
            egress.append({"to": [{"ipBlock": {"cidr": ext.cidr}}], "ports": [{"protocol": "TCP", "port": ext.port}]})
        for rule in s.egress:
            egress.append({"to": [{"ipBlock": {"cidr": rule.cidr}}], "ports": [{"protocol": "TCP", "port": p} for p in rule.ports]})
        if egress:
            ns.policy("allow-app-egress", {"podSelector": {"matchLabels": app}, "policyTypes": ["Egress"], "egress": egress})
