"""The stack's configuration, validated whole before any resource is declared.

Read from the Pulumi config of the project (`Pulumi.yaml` defaults, `Pulumi.<stack>.yaml`
values, overrides given by `cutover stack ...` or a runbook's `stack` action). Every problem
is collected with its config key path and raised together as one `InvalidInput`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cutover.errors import InvalidInput, Problem

PROJECT = "cutover-platform"

_CPU_RE = re.compile(r"^(?P<n>\d+(\.\d+)?)(?P<unit>m?)$")
_MEMORY_RE = re.compile(r"^(?P<n>\d+)(?P<unit>Ki|Mi|Gi|Ti)$")
_MEMORY_UNITS = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def cpu_millis(quantity: str) -> int:
    """`250m` -> 250, `1` -> 1000, `1.5` -> 1500."""
    m = _CPU_RE.match(quantity)
    if not m:
        raise ValueError(f"{quantity!r} is not a CPU quantity (e.g. 250m or 1)")
    n = float(m["n"])
    return round(n if m["unit"] else n * 1000)


def memory_mebibytes(quantity: str) -> int:
    """`512Mi` -> 512, `2Gi` -> 2048."""
    m = _MEMORY_RE.match(quantity)
    if not m:
        raise ValueError(f"{quantity!r} is not a memory quantity (e.g. 512Mi or 2Gi)")
    return max(1, round(int(m["n"]) * _MEMORY_UNITS[m["unit"]]))


def millis_to_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def mebibytes_to_memory(mib: int) -> str:
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=lambda s: re.sub(r"_([a-z])", lambda m: m[1].upper(), s))


class Resources(_Strict):
    """Requests and limits of one container."""

    cpu_request: str = "100m"
    cpu_limit: str = "500m"
    memory_request: str = "256Mi"
    memory_limit: str = "512Mi"

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _cpu(cls, v: str) -> str:
        cpu_millis(v)
        return v

    @field_validator("memory_request", "memory_limit")
    @classmethod
    def _memory(cls, v: str) -> str:
        memory_mebibytes(v)
        return v

    @model_validator(mode="after")
    def _requests_within_limits(self) -> "Resources":
        if cpu_millis(self.cpu_request) > cpu_millis(self.cpu_limit):
            raise ValueError(f"cpuRequest {self.cpu_request} is above cpuLimit {self.cpu_limit}")
        if memory_mebibytes(self.memory_request) > memory_mebibytes(self.memory_limit):
            raise ValueError(f"memoryRequest {self.memory_request} is above memoryLimit {self.memory_limit}")
        return self

    def as_kubernetes(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


class Image(_Strict):
    """A container image, pinned: an explicit tag that is not `latest`, optionally a digest."""

    repository: str = Field(min_length=1)
    tag: str
    digest: str | None = None

    @field_validator("tag")
    @classmethod
    def _pinned(cls, v: str) -> str:
        if v == "latest":
            raise ValueError("the tag `latest` is not pinned: give a release tag")
        if not _TAG_RE.match(v):
            raise ValueError(f"{v!r} is not a valid image tag")
        return v

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is not None and not _DIGEST_RE.match(v):
            raise ValueError(f"{v!r} is not a sha256 digest")
        return v

    @property
    def reference(self) -> str:
        ref = f"{self.repository}:{self.tag}"
        return f"{ref}@{self.digest}" if self.digest else ref


class EgressRule(_Strict):
    """An explicit egress allow to addresses outside the cluster."""

    name: str = Field(pattern=_DNS_LABEL, max_length=40)
    cidr: str = Field(pattern=r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$")
    ports: list[int] = Field(min_length=1)


class ExternalDatabase(_Strict):
    """A data service outside the cluster, reached by name (an ExternalName Service)."""

    host: str = Field(min_length=1)
    port: int = 5432
    cidr: str = Field(pattern=r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$")


class InClusterDatabase(_Strict):
    """A PostgreSQL StatefulSet inside the system's namespace."""

    image: Image
    storage: str = "10Gi"
    storage_class: str | None = None
    resources: Resources = Resources(cpu_request="250m", cpu_limit="1", memory_request="512Mi", memory_limit="1Gi")
    run_as_user: int = Field(default=999, ge=1)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        memory_mebibytes(v)
        return v


class DataServices(_Strict):
    """Where the systems' databases live: `external` endpoints or in-cluster `statefulset`s."""

    mode: Literal["external", "statefulset"]
    external: ExternalDatabase | None = None
    statefulset: InClusterDatabase | None = None

    @model_validator(mode="after")
    def _mode_settings(self) -> "DataServices":
        if getattr(self, self.mode) is None:
            raise ValueError(f"mode is {self.mode} but `{self.mode}` settings are missing")
        return self


class SystemSettings(_Strict):
    """How one shared system runs on the unified platform."""

    image: Image
    replicas: int = Field(default=2, ge=1)
    min_replicas: int = Field(default=2, ge=1)
    max_replicas: int = Field(default=6, ge=1)
    target_cpu_percent: int = Field(default=70, ge=10, le=100)
    port: int = Field(default=8080, ge=1024, le=65535)
    liveness_path: str = Field(default="/healthz", pattern=r"^/")
    readiness_path: str = Field(default="/readyz", pattern=r"^/")
    route: str | None = Field(default=None, pattern=r"^/[a-z0-9/-]*$")
    resources: Resources = Resources()
    calls: list[str] = []
    egress: list[EgressRule] = []
    data: Literal["external", "statefulset", "none"] | None = None
    database_name: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]*$")

    @model_validator(mode="after")
    def _replicas(self) -> "SystemSettings":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas {self.min_replicas} is above maxReplicas {self.max_replicas}")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(f"replicas {self.replicas} is outside minReplicas..maxReplicas ({self.min_replicas}..{self.max_replicas})")
        return self


class StackSettings(_Strict):
    """The whole stack configuration (project namespace `cutover-platform`)."""

    inventory: str = ""
    host: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$")
    tls_secret: str = Field(pattern=_DNS_LABEL)
    ingress_class: str = "nginx"
    ingress_controller_namespace: str = Field(default="ingress-nginx", pattern=_DNS_LABEL)
    namespace_prefix: str = Field(default="cutover-", pattern=r"^[a-z0-9-]*$", max_length=30)
    data: DataServices
    systems: dict[str, SystemSettings]
    units: dict[str, list[str]] = {}
    disruption_budget_min_available: int = Field(default=1, ge=0)

    # -- reading --------------------------------------------------------------------------

    @classmethod
    def from_values(cls, values: dict[str, Any], *, source: str) -> "StackSettings":
        """Validate raw config values (keys without the project prefix); raise InvalidInput."""
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise InvalidInput([Problem(source, f"{PROJECT}:{_loc(e['loc'])}", _message(e)) for e in err.errors()]) from None

    @classmethod
    def from_pulumi_config(cls, *, source: str) -> "StackSettings":
        """The settings as the running Pulumi program sees them."""
        import pulumi

        config = pulumi.Config(PROJECT)
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in _OBJECT_KEYS:
                value = config.get_object(key)
            elif key in _INT_KEYS:
                value = config.get_int(key)
            else:
                value = config.get(key)
            if value is not None:
                values[key] = value
        return cls.from_values(values, source=source)

    # -- derived ----------------------------------------------------------------------------

    def namespace(self, system: str) -> str:
        return f"{self.namespace_prefix}{system}"

    @property
    def front_door_namespace(self) -> str:
        return f"{self.namespace_prefix}front-door"

    def data_mode(self, system: str) -> str:
        return self.systems[system].data or self.data.mode

    def route(self, system: str) -> str:
        return self.systems[system].route or f"/{system}"

    def check_against(self, estate: Any, *, source: str) -> None:
        """Cross-check with the estate: every shared system configured, known units only."""
        problems: list[Problem] = []
        for code in estate.systems:
            if code not in self.systems:
                problems.append(Problem(source, f"{PROJECT}:systems", f"shared system {code!r} of the estate has no settings"))
        for code, system in self.systems.items():
            where = f"{PROJECT}:systems.{code}"
            if code not in estate.systems:
                problems.append(Problem(source, where, f"unknown shared system {code!r} (the estate has {', '.join(estate.systems)})"))
            for i, called in enumerate(system.calls):
                if called not in estate.systems or called == code:
                    problems.append(Problem(source, f"{where}.calls[{i}]", f"{called!r} is not another shared system"))
            mode = self.data_mode(code)
            if mode in ("external", "statefulset") and getattr(self.data, mode) is None:
                problems.append(Problem(source, f"{where}.data", f"data mode {mode} needs `data.{mode}` settings"))
            if len(self.namespace(code)) > 63:
                problems.append(Problem(source, where, f"namespace {self.namespace(code)!r} is longer than 63 characters"))
        routes: dict[str, str] = {}
        for code in self.systems:
            r = self.route(code)
            if r in routes:
                problems.append(Problem(source, f"{PROJECT}:systems.{code}.route", f"route {r} is also {routes[r]}'s"))
            routes[r] = code
        for system, units in self.units.items():
            if system not in estate.systems:
                problems.append(Problem(source, f"{PROJECT}:units.{system}", f"unknown shared system {system!r}"))
            for i, unit in enumerate(units):
                if unit not in estate.units:
                    problems.append(Problem(source, f"{PROJECT}:units.{system}[{i}]", f"unknown unit {unit!r}"))
        if problems:
            raise InvalidInput(problems)


_OBJECT_KEYS = {"data", "systems", "units"}
_INT_KEYS = {"disruptionBudgetMinAvailable"}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")
