"""The Pulumi stacks of the unified platform: render and check under mocks; drive the engine.

Two paths over the same program (`stacks/__main__.py`):

- `render` runs it in this process under Pulumi's mocks (no engine, no cluster) and turns
  every registered Kubernetes resource into a manifest; `check` validates each manifest
  strictly against a Kubernetes version's OpenAPI schema (kubernetes-validate) and applies
  the platform's policies. Secrets never reach a rendered manifest.
- `preview`, `up`, `refresh`, `destroy`, `outputs` go through the Automation API: a
  LocalWorkspace over `stacks/`, the local file backend under `.cutover/pulumi/` unless
  `PULUMI_BACKEND_URL` is set, the passphrase secrets provider (`PULUMI_CONFIG_PASSPHRASE`),
  never interactive. Without a `pulumi` binary they raise InvalidInput with an install hint.

Nothing here prints; errors are CutoverErrors.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import runpy
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from cutover.errors import CutoverError, InvalidInput, LockHeld, Problem, RunFailed

PROJECT = "cutover-platform"
DEFAULT_K8S_VERSION = "1.33"
SECRET_PLACEHOLDER = "rendered-without-secret"
REDACTED = "<redacted>"
OPERATIONS = ("preview", "up", "refresh", "destroy", "outputs")

ENGINE_MISSING = (
    "no Pulumi engine on this machine: install the Pulumi CLI so that `pulumi` is on PATH "
    "(https://www.pulumi.com/docs/iac/download-install/); `cutover stack render` and `check` need no engine"
)

# The envelope the engine wraps around a secret property value (pulumi.runtime.rpc).
_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
_SECRET_ENV_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL|PASSPHRASE)", re.I)
_TOP_LEVEL_ORDER = ("apiVersion", "kind", "metadata", "type", "spec", "data", "stringData")


def stacks_dir(root: Path) -> Path:
    return Path(root) / "stacks"


# --- the stack's configuration, as the engine would assemble it ---------------------------


@dataclass(frozen=True)
class StackConfig:
    """Config values for one stack: Pulumi.yaml defaults < Pulumi.<env>.yaml < overrides."""

    env: str
    values: dict[str, Any]  # full keys (`cutover-platform:host`, `kubernetes:context`)
    secret_keys: frozenset[str]
    secret_values: frozenset[str]  # the plaintexts given to the program, to keep out of output

    def as_pulumi(self) -> dict[str, str]:
        """Values as the runtime holds them: strings, structured values as JSON."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.values.items()}


def _full_key(key: str) -> str:
    return key if ":" in key else f"{PROJECT}:{key}"


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput([Problem(str(path), "", "file not found")]) from None
    except yaml.YAMLError as exc:
        raise InvalidInput([Problem(str(path), "", f"not valid YAML: {exc}")]) from None


def project_declarations(root: Path) -> dict[str, dict[str, Any]]:
    """The config keys Pulumi.yaml declares: {key: {type?, default?, secret?, description}}."""
    project = _read_yaml(stacks_dir(root) / "Pulumi.yaml") or {}
    return {k: (v if isinstance(v, dict) else {"default": v}) for k, v in (project.get("config") or {}).items()}


def load_stack_config(root: Path, env: str, overrides: dict[str, Any] | None = None) -> StackConfig:
    """Assemble the config of stack `env` for a mocked run; validate keys against Pulumi.yaml."""
    root = Path(root)
    declared = project_declarations(root)
    stack_path = stacks_dir(root) / f"Pulumi.{env}.yaml"
    if not stack_path.is_file():
        known = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in stacks_dir(root).glob("Pulumi.*.yaml"))
        raise InvalidInput([Problem(str(stack_path), "", f"no stack {env!r} (known: {', '.join(known) or 'none'})")])
    stack = _read_yaml(stack_path) or {}
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    secret_keys = {_full_key(k) for k, d in declared.items() if d.get("secret")}
    for key, decl in declared.items():
        if "default" in decl:
            values[_full_key(key)] = decl["default"]
    given = dict((stack.get("config") or {}))
    for key, value in given.items():
        full = _full_key(key)
        if full.startswith(f"{PROJECT}:") and full.split(":", 1)[1] not in declared:
            problems.append(Problem(str(stack_path), f"config.{key}", "unknown key (not declared in Pulumi.yaml)"))
            continue
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.add(full)
            value = None  # encrypted: only the engine can read it
        values[full] = value
    for key, value in (overrides or {}).items():
        full = _full_key(key)
        if full.startswith(f"{PROJECT}:") and full.split(":", 1)[1] not in declared:
            problems.append(Problem("overrides", key, "unknown key (not declared in Pulumi.yaml)"))
            continue
        values[full] = value
    # Secrets the mocks cannot decrypt get CUTOVER_DATABASE_PASSWORD (databasePassword) or a
    # placeholder; either way their plaintexts are known, so a rendered manifest never has them.
    for full in secret_keys:
        if values.get(full) is None:
            given = os.environ.get("CUTOVER_DATABASE_PASSWORD") if full == f"{PROJECT}:databasePassword" else None
            values[full] = given or SECRET_PLACEHOLDER
    secret_values = {str(values[k]) for k in secret_keys}
    values = {k: v for k, v in values.items() if v is not None}
    if problems:
        raise InvalidInput(problems)
    return StackConfig(env=env, values=values, secret_keys=frozenset(secret_keys), secret_values=frozenset(secret_values))


# --- rendering under mocks ---------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes resource as the program declared it, ready to apply."""

    type_token: str  # kubernetes:apps/v1:Deployment
    doc: dict[str, Any]
    secret_paths: tuple[str, ...] = ()  # properties that arrived as secrets
    leaks: tuple[str, ...] = ()  # fields that held a secret's plaintext (redacted here)

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        return (self.doc.get("metadata") or {}).get("name", "")

    @property
    def namespace(self) -> str | None:
        return (self.doc.get("metadata") or {}).get("namespace")

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @property
    def filename(self) -> str:
        parts = [self.kind.lower(), *([self.namespace] if self.namespace else []), self.name]
        return "--".join(parts) + ".yaml"


@dataclass
class Rendering:
    env: str
    manifests: list[Manifest]
    seconds: float = 0.0

    def by_kind(self) -> dict[str, list[Manifest]]:
        out: dict[str, list[Manifest]] = {}
        for m in self.manifests:
            out.setdefault(m.kind, []).append(m)
        return out

    def find(self, kind: str, name: str, namespace: str | None = None) -> Manifest | None:
        for m in self.manifests:
            if m.kind == kind and m.name == name and m.namespace == namespace:
                return m
        return None


class _Recorder:
    """Pulumi mocks that record every resource; `new_resource` runs on several threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registered: list[tuple[str, str, bool, dict[str, Any]]] = []

    # pulumi.runtime.Mocks' interface (kept duck-typed so importing this module stays cheap)
    def new_resource(self, args: Any) -> tuple[str, dict[str, Any]]:
        with self.lock:
            self.registered.append((args.typ, args.name, args.custom, args.inputs))
        return f"{args.name}-id", args.inputs

    def call(self, args: Any) -> tuple[dict[str, Any], None]:
        return {}, None


def _mocks(recorder: _Recorder) -> Any:
    import pulumi

    class RecordingMocks(pulumi.runtime.Mocks):
        def new_resource(self, args):  # noqa: ANN001, ANN201
            return recorder.new_resource(args)

        def call(self, args):  # noqa: ANN001, ANN201
            return recorder.call(args)

    return RecordingMocks()


def render_program(program: Callable[[], Any], *, env: str, config: StackConfig | None = None, project: str = PROJECT) -> Rendering:
    """Run `program` under mocks in this process; every Kubernetes resource becomes a Manifest."""
    import pulumi

    recorder = _Recorder()
    values = config.as_pulumi() if config else {}
    secret_keys = sorted(config.secret_keys) if config else []
    secret_values = config.secret_values if config else frozenset()
    started = time.perf_counter()

    async def run() -> None:
        # Config and mocks live in context variables: set them inside the running loop. The
        # set of pending outputs is shared with the caller's context unless replaced here: a
        # run that failed would leave its dead tasks in it and hang every later run.
        pulumi.runtime.settings.SETTINGS.outputs = set()
        pulumi.runtime.set_all_config(values, secret_keys)
        pulumi.runtime.set_mocks(_mocks(recorder), project=project, stack=env, preview=False)
        program()
        await pulumi.runtime.stack.wait_for_rpcs()

    try:
        asyncio.run(run())
    except CutoverError:
        raise
    except Exception as exc:  # the program's own failure: report it, not a traceback
        raise RunFailed(f"the stack program failed under mocks: {type(exc).__name__}: {exc}") from exc
    manifests = [
        _manifest(typ, inputs, secret_values)
        for typ, _name, custom, inputs in recorder.registered
        if custom and typ.startswith("kubernetes:") and not typ.startswith("pulumi:providers:")
    ]
    manifests.sort(key=_sort_key)
    return Rendering(env=env, manifests=manifests, seconds=time.perf_counter() - started)


def render(root: Path, env: str, overrides: dict[str, Any] | None = None) -> Rendering:
    """Render stack `env` of the project under `root` (stacks/__main__.py) under mocks."""
    root = Path(root)
    config = load_stack_config(root, env, overrides)
    program_dir = stacks_dir(root)
    main = program_dir / "__main__.py"

    def program() -> None:
        # The program imports its components as the engine would run it: from its own folder.
        _import_from(program_dir)
        runpy.run_path(str(main), run_name="__main__")

    return render_program(program, env=env, config=config)


def _import_from(program_dir: Path) -> None:
    """Make `components` resolve to `program_dir`'s, even after another project's was imported."""
    loaded = sys.modules.get("components")
    origin = Path(getattr(loaded, "__file__", "") or "").resolve().parent.parent if loaded else None
    if loaded is not None and origin != program_dir.resolve():
        for name in [n for n in sys.modules if n == "components" or n.startswith("components.")]:
            del sys.modules[name]
    for entry in [p for p in sys.path if (Path(p) / "components" / "__init__.py").is_file() and (Path(p) / "Pulumi.yaml").is_file()]:
        sys.path.remove(entry)
    sys.path.insert(0, str(program_dir))


_KIND_ORDER = {k: i for i, k in enumerate(["Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "Secret", "ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress"])}


def _sort_key(m: Manifest) -> tuple[Any, ...]:
    return (m.namespace or "", _KIND_ORDER.get(m.kind, 99), m.kind, m.name)


def _manifest(type_token: str, inputs: dict[str, Any], secret_values: frozenset[str]) -> Manifest:
    secret_paths: list[str] = []
    leaks: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            if value.get(_SECRET_SIG_KEY) == _SECRET_SIG:
                secret_paths.append(path)
                return clean(value.get("value"), path)
            return {k: clean(v, f"{path}.{k}" if path else k) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value in secret_values:
            leaks.append(path)
            return REDACTED
        return value

    doc = clean(inputs, "")
    if "apiVersion" not in doc or "kind" not in doc:
        # Token kubernetes:<group>/<version>:<Kind> -> apiVersion <group>/<version>, v1 for core.
        _, group_version, kind = type_token.split(":")
        group, version = group_version.split("/")
        doc.setdefault("apiVersion", version if group == "core" else f"{group}/{version}")
        doc.setdefault("kind", kind)
    if doc.get("kind") == "Secret":
        # A Secret's values never leave the stack: the rendered manifest names its keys only.
        keys: list[str] = []
        for prop in ("data", "stringData"):
            if isinstance(doc.get(prop), dict):
                keys += sorted(doc[prop])
                doc[prop] = {k: REDACTED for k in doc[prop]}
        leaks = [p for p in leaks if not p.startswith(("data", "stringData"))]
        meta = doc.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), "cutover/redacted": ",".join(keys) or "none"}
        doc["metadata"] = dict(sorted(meta.items()))
    ordered = {k: doc[k] for k in _TOP_LEVEL_ORDER if k in doc}
    ordered.update({k: v for k, v in doc.items() if k not in ordered})
    return Manifest(type_token=type_token, doc=ordered, secret_paths=tuple(secret_paths), leaks=tuple(leaks))


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (ConfigMap files) as literal blocks, so they read as the files they are."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_ManifestDumper.add_representer(str, _str_representer)


def manifest_yaml(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_ManifestDumper, sort_keys=False, allow_unicode=True, width=120)


def write_manifests(rendering: Rendering, out_dir: Path) -> list[Path]:
    """One file per resource plus kustomization.yaml; replaces a previous render in `out_dir`.

    A folder that holds anything but a previous render is refused, so nothing else is lost.
    """
    out = Path(out_dir)
    if out.exists():
        previous = out / "kustomization.yaml"
        if not out.is_dir() or (any(out.iterdir()) and not previous.is_file()):
            raise InvalidInput([Problem(str(out), "", "not empty and not a previous render (no kustomization.yaml): choose another --out")])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    files: list[str] = []
    try:
        for m in rendering.manifests:
            if m.filename in files:
                raise RunFailed(f"two resources render to {m.filename}")
            (staging / m.filename).write_text(manifest_yaml(m.doc), encoding="utf-8")
            files.append(m.filename)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "metadata": {"name": f"{PROJECT}-{rendering.env}", "annotations": {"cutover/rendered-by": "cutover stack render (Pulumi mocks)"}},
            "resources": files,
        }
        (staging / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return [out / f for f in files] + [out / "kustomization.yaml"]


# --- checks: strict schema validation and the platform's policies --------------------------


@dataclass(frozen=True)
class Violation:
    rule: str
    resource: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.field}: {self.message} [{self.rule}]"

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "resource": self.resource, "field": self.field, "message": self.message}


@functools.lru_cache(maxsize=1)
def _kubernetes_validate() -> Any:
    """kubernetes_validate, with its schema files read once per process (it re-reads them per call)."""
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils

    if not hasattr(kv_utils.schema_contents, "cache_info"):
        kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)
    return kubernetes_validate


def supported_k8s_versions() -> list[str]:
    return _kubernetes_validate().utils.all_versions()


def validate_schema(manifest: Manifest, k8s_version: str) -> list[Violation]:
    kv = _kubernetes_validate()
    try:
        kv.validate(manifest.doc, k8s_version, strict=True)
    except kv.ValidationError as err:
        where = ".".join(str(p) for p in err.path) or "(top)"
        return [Violation("schema", manifest.label, where, f"{err.message} (Kubernetes {err.version}, strict)")]
    except kv.SchemaNotFoundError as err:
        return [Violation("schema", manifest.label, "apiVersion", err.message)]
    return []


_POD_SPEC_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


def _containers(m: Manifest) -> Iterator[tuple[str, dict[str, Any], dict[str, Any], bool]]:
    """(field path, container, pod spec, is_init) of every container of a workload."""
    path = _POD_SPEC_PATHS.get(m.kind)
    if not path:
        return
    spec: Any = m.doc
    for part in path:
        spec = spec.get(part) if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        return
    base = ".".join(path)
    for prop, is_init in (("initContainers", True), ("containers", False)):
        for i, c in enumerate(spec.get(prop) or []):
            yield f"{base}.{prop}[{i}]", c, spec, is_init


def policy_limits(m: Manifest, _: list[Manifest]) -> list[Violation]:
    out = []
    for where, c, _spec, _init in _containers(m):
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if not (res.get(kind) or {}).get(r):
                    out.append(Violation("limits", m.label, f"{where}.resources.{kind}.{r}", f"container {c.get('name')!r} has no {r} {kind[:-1]}"))
    return out


def policy_probes(m: Manifest, _: list[Manifest]) -> list[Violation]:
    out = []
    for where, c, _spec, is_init in _containers(m):
        if is_init:
            continue
        for probe in ("livenessProbe", "readinessProbe"):
            if not c.get(probe):
                out.append(Violation("probes", m.label, f"{where}.{probe}", f"container {c.get('name')!r} has no {probe}"))
    return out


def policy_non_root(m: Manifest, _: list[Manifest]) -> list[Violation]:
    out = []
    for where, c, spec, _init in _containers(m):
        pod_sc, sc = spec.get("securityContext") or {}, c.get("securityContext") or {}
        name = c.get("name")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if non_root is not True:
            out.append(Violation("non-root", m.label, f"{where}.securityContext.runAsNonRoot", f"container {name!r} may run as root: set runAsNonRoot: true"))
        if user == 0:
            out.append(Violation("non-root", m.label, f"{where}.securityContext.runAsUser", f"container {name!r} runs as user 0"))
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(Violation("non-root", m.label, f"{where}.securityContext.readOnlyRootFilesystem", f"container {name!r} has a writable root filesystem"))
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(Violation("non-root", m.label, f"{where}.securityContext.allowPrivilegeEscalation", f"container {name!r} may escalate privileges"))
    return out


def image_tag(image: str) -> tuple[str | None, str | None]:
    """(tag, digest) of an image reference; a registry's port is not a tag."""
    ref, _, digest = image.partition("@")
    last = ref.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    return tag, digest or None


def policy_pinned_image(m: Manifest, _: list[Manifest]) -> list[Violation]:
    out = []
    for where, c, _spec, _init in _containers(m):
        image = c.get("image") or ""
        tag, digest = image_tag(image)
        if tag == "latest":
            out.append(Violation("pinned-image", m.label, f"{where}.image", f"image {image!r} uses the `latest` tag"))
        elif tag is None and digest is None:
            out.append(Violation("pinned-image", m.label, f"{where}.image", f"image {image!r} has no tag: pin a release tag or digest"))
    return out


def policy_secret_in_env(m: Manifest, _: list[Manifest]) -> list[Violation]:
    out = []
    for where, c, _spec, _init in _containers(m):
        for i, e in enumerate(c.get("env") or []):
            field_path = f"{where}.env[{i}].value"
            if "value" not in e:
                continue
            if field_path in m.leaks or e.get("value") == REDACTED:
                out.append(Violation("secret-in-env", m.label, field_path, f"env {e.get('name')!r} holds a secret's value inline: reference a Secret (valueFrom.secretKeyRef)"))
            elif _SECRET_ENV_NAME.search(e.get("name", "")) and e.get("value"):
                out.append(Violation("secret-in-env", m.label, field_path, f"env {e.get('name')!r} looks like a credential given as a literal: reference a Secret (valueFrom.secretKeyRef)"))
    return out


def _is_default_deny(np: Manifest) -> bool:
    spec = np.doc.get("spec") or {}
    selector = spec.get("podSelector")
    empty_selector = selector == {} or (isinstance(selector, dict) and not selector.get("matchLabels") and not selector.get("matchExpressions"))
    return bool(empty_selector and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or []) and not spec.get("ingress") and not spec.get("egress"))


def policy_default_deny(_: Manifest | None, manifests: list[Manifest]) -> list[Violation]:
    """Every namespace (declared, or holding a resource) has a default-deny NetworkPolicy."""
    namespaces = {m.name for m in manifests if m.kind == "Namespace"} | {m.namespace for m in manifests if m.namespace}
    denied = {m.namespace for m in manifests if m.kind == "NetworkPolicy" and _is_default_deny(m)}
    return [
        Violation("default-deny", f"Namespace {ns}", "NetworkPolicy", "no default-deny NetworkPolicy (podSelector {}, policyTypes [Ingress, Egress], no rules)")
        for ns in sorted(namespaces - denied)
    ]


# Policies as data: rule name -> (what it checks, per-manifest function). `default-deny` looks at all.
POLICIES: dict[str, tuple[str, Callable[[Manifest, list[Manifest]], list[Violation]]]] = {
    "limits": ("every container has CPU and memory requests and limits", policy_limits),
    "probes": ("every container has liveness and readiness probes", policy_probes),
    "non-root": ("every container runs as non-root, read-only, without privilege escalation", policy_non_root),
    "pinned-image": ("every image has a pinned tag or digest, never `latest`", policy_pinned_image),
    "secret-in-env": ("no secret value given literally in a container's env", policy_secret_in_env),
}
NAMESPACE_POLICIES = {"default-deny": ("every namespace has a default-deny NetworkPolicy", policy_default_deny)}


@dataclass
class CheckReport:
    env: str
    k8s_version: str
    manifests: int
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "k8s_version": self.k8s_version,
            "manifests": self.manifests,
            "passed": self.passed,
            "violations": [v.as_dict() for v in self.violations],
            "seconds": round(self.seconds, 3),
        }


def check(rendering: Rendering, k8s_version: str = DEFAULT_K8S_VERSION) -> CheckReport:
    """Validate every manifest strictly and apply every policy; collect all violations."""
    versions = {".".join(v.split(".")[:2]) for v in supported_k8s_versions()}
    if ".".join(k8s_version.removeprefix("v").split(".")[:2]) not in versions:
        raise InvalidInput([Problem("--k8s-version", "", f"unsupported Kubernetes version {k8s_version!r} (bundled schemas: {', '.join(sorted(versions, key=lambda v: tuple(map(int, v.split('.')))))})")])
    started = time.perf_counter()
    violations: list[Violation] = []
    for m in rendering.manifests:
        violations += validate_schema(m, k8s_version)
        for _, policy in POLICIES.values():
            violations += policy(m, rendering.manifests)
    for _, policy in NAMESPACE_POLICIES.values():
        violations += policy(None, rendering.manifests)
    return CheckReport(env=rendering.env, k8s_version=k8s_version, manifests=len(rendering.manifests), violations=violations, seconds=time.perf_counter() - started)


# --- the engine: Automation API ----------------------------------------------------------


def _engine_missing(exc: BaseException) -> bool:
    return isinstance(exc, FileNotFoundError) and (getattr(exc, "filename", None) == "pulumi" or "pulumi" in str(exc))


@dataclass
class Engine:
    """A LocalWorkspace stack over `stacks/` for one environment."""

    root: Path
    env: str
    work_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def backend_url(self) -> str:
        return os.environ.get("PULUMI_BACKEND_URL") or (self.work_dir / "pulumi").as_uri()

    def _stack(self) -> Any:
        stack_file = stacks_dir(self.root) / f"Pulumi.{self.env}.yaml"
        if not stack_file.is_file():
            load_stack_config(self.root, self.env)  # raises with the known stacks
        from pulumi import automation as auto

        with _engine_errors(self.env):
            command = auto.PulumiCommand()  # finds the `pulumi` binary, or FileNotFoundError
        if self.backend_url.startswith("file://") and not (os.environ.get("PULUMI_CONFIG_PASSPHRASE") or os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
            raise InvalidInput("set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE): the stack's secrets are encrypted with it")
        if self.backend_url.startswith("file://"):
            (self.work_dir / "pulumi").mkdir(parents=True, exist_ok=True)
        env_vars = {"PULUMI_BACKEND_URL": self.backend_url, "PULUMI_SKIP_UPDATE_CHECK": "true", "PULUMI_SKIP_CONFIRMATIONS": "true"}
        opts = auto.LocalWorkspaceOptions(env_vars=env_vars, pulumi_command=command, secrets_provider="passphrase" if self.backend_url.startswith("file://") else None)
        with _engine_errors(self.env):
            stack = auto.create_or_select_stack(stack_name=self.env, work_dir=str(stacks_dir(self.root)), opts=opts)
            password = os.environ.get("CUTOVER_DATABASE_PASSWORD")
            if password:
                stack.set_config("databasePassword", auto.ConfigValue(value=password, secret=True))
            elif "databasePassword" not in _stack_config_keys(stack_file):
                raise InvalidInput([Problem(str(stack_file), f"config.{PROJECT}:databasePassword", "not set: give CUTOVER_DATABASE_PASSWORD or run `pulumi config set --secret databasePassword`")])
        return stack

    def _config_file(self) -> str | None:
        """The stack file with the overrides applied, under .cutover/ (the committed file is untouched)."""
        if not self.overrides:
            return None
        stack_file = stacks_dir(self.root) / f"Pulumi.{self.env}.yaml"
        data = _read_yaml(stack_file) or {}
        config = data.setdefault("config", {})
        for key, value in self.overrides.items():
            config.pop(key, None)
            config[_full_key(key)] = value
        target = self.work_dir / "stacks" / self.env / f"Pulumi.{self.env}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        tmp.replace(target)
        return str(target)

    def preflight(self, k8s_version: str = DEFAULT_K8S_VERSION) -> CheckReport:
        """Render and check under mocks before the engine touches a cluster."""
        report = check(render(self.root, self.env, self.overrides), k8s_version)
        if not report.passed:
            raise RunFailed(f"stack {self.env} fails its checks ({len(report.violations)} violations): {report.violations[0]}")
        return report

    def run(self, operation: str, *, on_output: Callable[[str], None] | None = None) -> dict[str, Any]:
        if operation not in OPERATIONS:
            raise InvalidInput([Problem("operation", "", f"unknown operation {operation!r} (expected one of {', '.join(OPERATIONS)})")])
        stack = self._stack()
        if operation in ("preview", "up"):
            self.preflight()
        started = time.perf_counter()
        summary: dict[str, Any] = {"env": self.env, "operation": operation, "backend": _redact_url(self.backend_url)}
        with _engine_errors(self.env):
            if operation == "outputs":
                summary["outputs"] = _outputs(stack.outputs())
            elif operation == "preview":
                result = stack.preview(on_output=on_output, color="never", diff=False, config_file=self._config_file())
                summary["changes"] = dict(result.change_summary or {})
            elif operation == "up":
                result = stack.up(on_output=on_output, color="never", config_file=self._config_file())
                summary |= _update_summary(result.summary)
                summary["outputs"] = _outputs(result.outputs)
            elif operation == "refresh":
                result = stack.refresh(on_output=on_output, color="never", config_file=self._config_file())
                summary |= _update_summary(result.summary)
            else:
                result = stack.destroy(on_output=on_output, color="never", config_file=self._config_file())
                summary |= _update_summary(result.summary)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        return summary


def _stack_config_keys(stack_file: Path) -> set[str]:
    data = _read_yaml(stack_file) or {}
    return {k.split(":", 1)[1] if k.startswith(f"{PROJECT}:") else k for k in (data.get("config") or {})}


class _engine_errors:
    """Translate the Automation API's failures into CutoverErrors."""

    def __init__(self, env: str) -> None:
        self.env = env

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, CutoverError):
            return False
        from pulumi import automation as auto

        if _engine_missing(exc):
            raise InvalidInput(ENGINE_MISSING) from None
        if isinstance(exc, auto.ConcurrentUpdateError):
            raise LockHeld(f"stack {self.env} is being updated by another run: wait for it, or `pulumi cancel` it if it died") from exc
        if isinstance(exc, auto.CommandError):
            stderr = str(exc).split(" stderr: ", 1)[-1]  # str(CommandResult): code, stdout, stderr
            tail = [line.strip() for line in stderr.splitlines() if line.strip()][-3:]
            raise RunFailed(f"pulumi failed on stack {self.env}: {' / '.join(tail) or exc}") from exc
        return False


def _outputs(outputs: Any) -> dict[str, Any]:
    return {k: ("[secret]" if getattr(v, "secret", False) else getattr(v, "value", v)) for k, v in (outputs or {}).items()}


def _update_summary(summary: Any) -> dict[str, Any]:
    return {"result": getattr(summary, "result", None), "version": getattr(summary, "version", None), "changes": dict(getattr(summary, "resource_changes", None) or {})}


def _redact_url(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; VALUE is read as YAML/JSON (`units={"docs": [...]}`), else a string."""
    out: dict[str, Any] = {}
    problems = []
    for i, pair in enumerate(pairs):
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            problems.append(Problem("--config", f"[{i}]", f"{pair!r} is not KEY=VALUE"))
            continue
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(Problem("--config", key, f"not valid YAML/JSON: {exc}"))
    if problems:
        raise InvalidInput(problems)
    return out
