"""The runbook: one staged cutover of a shared system, declared in `runbooks/<name>.yml`.

A runbook names the shared system it moves, the steps every unit goes through (each with its
`do`, its `undo` and the gates after it) and the waves that choose the units, each with its
batches, calendar window, per-site concurrency and failure threshold; `final_gates` close it
(training attested, official operation from a date).

`load_runbook(path, estate, root)` validates the whole file at once, against the estate and
the playbooks under `root/playbooks/`, and raises one `InvalidInput` listing every problem
with its key path (`waves[1].batch`) and line. Nothing here has side effects.

Selectors (`select`, `exclude`): the attribute filters `kinds`, `provinces` and `districts`
are combined with AND (a unit must match every one given, any value within one); `codes` and
`pilot` (a pilot set of the inventory's estate.yml) add their units. A wave takes the union
of those, minus what its `exclude` (same keys, same meaning) selects.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import types
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, field_validator, model_validator

from cutover.errors import InvalidInput, Problem
from cutover.estate import PROVINCES, UNIT_KINDS, Estate, nfc

TIMEZONE = ZoneInfo("Asia/Ho_Chi_Minh")
PLAYBOOKS_DIR = "playbooks"
ON_FAILURE = ("rollback_batch", "pause", "stop")
ACTION_KINDS = ("playbook", "http", "approval", "stack")
GATE_KINDS = ("reconcile", "smoke", "approval", "failure_threshold")

_ID = r"^[a-z0-9][a-z0-9_-]*$"
_SHARE_RE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*%\s*$")
_HOURS_RE = re.compile(r"^(?P<h1>\d{2}):(?P<m1>\d{2})-(?P<h2>\d{2}):(?P<m2>\d{2})$")


# --- shares: a count or a percentage ---------------------------------------------------------


def share_problem(value: Any, *, minimum: int) -> str | None:
    """Why `value` is not a count (>= minimum) or a percentage "N%" (1-100), or None."""
    if isinstance(value, bool):
        return "must be a count or a percentage like '20%', not a boolean"
    if isinstance(value, int):
        return None if value >= minimum else f"a count must be at least {minimum}, not {value}"
    if isinstance(value, str):
        m = _SHARE_RE.match(value)
        if not m:
            return f"{value!r} is neither a count nor a percentage like '20%'"
        pct = float(m["n"])
        if not 1 <= pct <= 100:
            return f"a percentage must be between 1% and 100%, not {value.strip()}"
        return None
    return f"must be a count or a percentage like '20%', not {type(value).__name__}"


def resolve_share(value: int | str, total: int, *, round_up: bool) -> int:
    """A count stays itself; "N%" of `total`, rounded up (batch sizes) or down (tolerances)."""
    if isinstance(value, int):
        return value
    pct = float(_SHARE_RE.match(value)["n"])  # type: ignore[index]
    exact = pct * total / 100
    # Guard against float noise (e.g. 10% of 30 = 3.0000000000000004).
    exact = round(exact, 9)
    return math.ceil(exact) if round_up else math.floor(exact)


Share = int | str


# --- the declaration models --------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlaybookAction(_Strict):
    """Run a playbook under playbooks/ for the batch's units (the engine passes --limit)."""

    kind: ClassVar[str] = "playbook"
    playbook: str
    vars: dict[str, Any] = {}


class HttpCheck(_Strict):
    url: str
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect_status: int = 200
    expect_header: dict[str, str] = {}
    expect_body: str | None = None
    retries: int = Field(default=0, ge=0)
    timeout: float = Field(default=10.0, gt=0)


class HttpAction(_Strict):
    kind: ClassVar[str] = "http"
    http: HttpCheck


class ApprovalSpec(_Strict):
    gate: str = Field(pattern=_ID)
    prompt: str = ""


class ApprovalAction(_Strict):
    kind: ClassVar[str] = "approval"
    approval: ApprovalSpec


class StackSpec(_Strict):
    env: str = Field(pattern=_ID)
    config: dict[str, Any] = {}


class StackAction(_Strict):
    kind: ClassVar[str] = "stack"
    stack: StackSpec


def _kind_of(value: Any, kinds: tuple[str, ...]) -> str | None:
    if isinstance(value, dict):
        present = [k for k in kinds if k in value]
    else:
        present = [k for k in kinds if getattr(value, k, None) is not None]
    return f"<{present[0]}>" if len(present) == 1 else None


Action = Annotated[
    Union[
        Annotated[PlaybookAction, Tag("<playbook>")],
        Annotated[HttpAction, Tag("<http>")],
        Annotated[ApprovalAction, Tag("<approval>")],
        Annotated[StackAction, Tag("<stack>")],
    ],
    Discriminator(
        lambda v: _kind_of(v, ACTION_KINDS),
        custom_error_type="action_kind",
        custom_error_message="an action is exactly one of: playbook (with optional vars), http, approval, stack",
    ),
]

SmokeAction = Annotated[
    Union[Annotated[PlaybookAction, Tag("<playbook>")], Annotated[HttpAction, Tag("<http>")]],
    Discriminator(
        lambda v: _kind_of(v, ("playbook", "http")),
        custom_error_type="action_kind",
        custom_error_message="a smoke check is exactly one of: playbook, http",
    ),
]


class ReconcileGate(_Strict):
    """Data reconciliation right after the step, on the site that holds the data."""

    kind: ClassVar[str] = "reconcile"
    reconcile: PlaybookAction


class SmokeGate(_Strict):
    kind: ClassVar[str] = "smoke"
    smoke: SmokeAction


class ApprovalGate(_Strict):
    kind: ClassVar[str] = "approval"
    approval: ApprovalSpec


class ThresholdGate(_Strict):
    """The batch stops (and, per on_failure, rolls back) once more units than this failed."""

    kind: ClassVar[str] = "failure_threshold"
    failure_threshold: Share

    @field_validator("failure_threshold")
    @classmethod
    def _share(cls, v: Share) -> Share:
        if (p := share_problem(v, minimum=0)) is not None:
            raise ValueError(p)
        return v


Gate = Annotated[
    Union[
        Annotated[ReconcileGate, Tag("<reconcile>")],
        Annotated[SmokeGate, Tag("<smoke>")],
        Annotated[ApprovalGate, Tag("<approval>")],
        Annotated[ThresholdGate, Tag("<failure_threshold>")],
    ],
    Discriminator(
        lambda v: _kind_of(v, GATE_KINDS),
        custom_error_type="gate_kind",
        custom_error_message="a gate is exactly one of: reconcile, smoke, approval, failure_threshold",
    ),
]

_TAGGED: dict[str, tuple[type[BaseModel], ...]] = {
    "<playbook>": (PlaybookAction,),
    "<http>": (HttpAction,),
    "<approval>": (ApprovalAction, ApprovalGate),
    "<stack>": (StackAction,),
    "<reconcile>": (ReconcileGate,),
    "<smoke>": (SmokeGate,),
    "<failure_threshold>": (ThresholdGate,),
}


class Step(_Strict):
    """One step every unit goes through, in order. `changes` defaults by action: playbooks and
    stack operations change state (so need an `undo`), http checks and approvals do not."""

    id: str = Field(pattern=_ID)
    description: str = ""
    do: Action
    undo: Action | None = None
    changes: bool | None = None
    timeout: int = Field(default=600, ge=1, description="seconds, per unit")
    retries: int = Field(default=0, ge=0)
    gates: list[Gate] = []

    @property
    def changes_state(self) -> bool:
        if self.changes is not None:
            return self.changes
        return self.do.kind in ("playbook", "stack")

    @property
    def is_approval(self) -> bool:
        return self.do.kind == "approval"


class Selector(_Strict):
    kinds: list[str] = []
    provinces: list[str] = []
    districts: list[str] = []
    codes: list[str] = []
    pilot: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.kinds or self.provinces or self.districts or self.codes or self.pilot)


class Select(Selector):
    exclude: Selector | None = None


class Window(_Strict):
    """Calendar window in Asia/Ho_Chi_Minh: from the start of `not_before` to the end of
    `deadline`, and each day only within `hours` ("07:00-22:00"; "22:00-05:00" spans midnight;
    "00:00-24:00", the default, is the whole day)."""

    not_before: date
    deadline: date
    hours: str = "00:00-24:00"

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        m = _HOURS_RE.match(v.strip())
        if not m:
            raise ValueError(f"hours {v!r} must look like '07:00-22:00'")
        h1, m1, h2, m2 = (int(m[k]) for k in ("h1", "m1", "h2", "m2"))
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
            raise ValueError(f"hours {v!r}: not a valid time of day")
        if h1 * 60 + m1 == h2 * 60 + m2:
            raise ValueError(f"hours {v!r}: the window opens and closes at the same time")
        return v.strip()

    def _bounds(self) -> tuple[int, int]:
        m = _HOURS_RE.match(self.hours)
        assert m
        return int(m["h1"]) * 60 + int(m["m1"]), int(m["h2"]) * 60 + int(m["m2"])

    @property
    def minutes_per_day(self) -> int:
        start, end = self._bounds()
        return end - start if end > start else 24 * 60 - start + end

    @property
    def opens_at(self) -> datetime:
        return datetime.combine(self.not_before, time(0), TIMEZONE)

    @property
    def closes_at(self) -> datetime:
        return datetime.combine(self.deadline + timedelta(days=1), time(0), TIMEZONE)

    def is_open(self, at: datetime) -> bool:
        """Whether work may run at `at` (an aware datetime): inside the dates and the hours."""
        local = at.astimezone(TIMEZONE)
        if not self.opens_at <= local < self.closes_at:
            return False
        start, end = self._bounds()
        minute = local.hour * 60 + local.minute
        return start <= minute < end if end > start else (minute >= start or minute < end)

    def next_opening(self, at: datetime) -> datetime | None:
        """The first moment at or after `at` when the window is open; None once it has closed."""
        local = at.astimezone(TIMEZONE)
        if self.is_open(local):
            return local
        start, _ = self._bounds()
        day = max(local.date(), self.not_before)
        for offset in range(0, 3):
            candidate = datetime.combine(day + timedelta(days=offset), time(start // 60, start % 60), TIMEZONE)
            if candidate >= local and self.is_open(candidate):
                return candidate
        return None


class ForecastSpec(_Strict):
    batch_minutes: float = Field(gt=0, description="declared duration of one batch, minutes")


class Wave(_Strict):
    id: str = Field(pattern=_ID)
    description: str = ""
    select: Select
    batch: Share
    window: Window
    max_parallel_per_site: int = Field(ge=1)
    max_failed: Share = 0
    approve_before: str | None = Field(default=None, pattern=_ID)
    approve_after: str | None = Field(default=None, pattern=_ID)
    timeout_factor: float = Field(default=1.0, ge=1, description="multiplies every step's timeout in this wave (slow links)")
    forecast: ForecastSpec | None = None

    @field_validator("batch")
    @classmethod
    def _batch(cls, v: Share) -> Share:
        if (p := share_problem(v, minimum=1)) is not None:
            raise ValueError(p)
        return v

    @field_validator("max_failed")
    @classmethod
    def _max_failed(cls, v: Share) -> Share:
        if (p := share_problem(v, minimum=0)) is not None:
            raise ValueError(p)
        return v


class FinalGate(_Strict):
    """After the last wave: an approval (optionally by a deadline) and/or a date gate."""

    id: str = Field(pattern=_ID)
    description: str = ""
    approval: ApprovalSpec | None = None
    deadline: date | None = None
    not_before: date | None = None

    @model_validator(mode="after")
    def _shape(self) -> "FinalGate":
        if self.approval is None and self.not_before is None:
            raise ValueError("a final gate needs an approval or a not_before date")
        if self.deadline is not None and self.approval is None:
            raise ValueError("a deadline belongs to an approval: give the approval it bounds")
        return self


class Requires(_Strict):
    identifier_code: bool = False


class Runbook(_Strict):
    name: str = Field(pattern=_ID)
    description: str = ""
    system: str
    requires: Requires = Requires()
    on_failure: Literal["rollback_batch", "pause", "stop"]
    forecast: ForecastSpec | None = None
    steps: list[Step] = Field(min_length=1)
    waves: list[Wave] = Field(min_length=1)
    final_gates: list[FinalGate] = []

    _path: Path | None = PrivateAttr(default=None)
    _digest: str = PrivateAttr(default="")
    _playbook_digests: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def digest(self) -> str:
        """sha256 of the runbook file's bytes."""
        return self._digest

    @property
    def playbook_digests(self) -> dict[str, str]:
        """sha256 of each referenced playbook's bytes, by its name under playbooks/."""
        return dict(self._playbook_digests)

    def wave(self, wave_id: str) -> Wave:
        for w in self.waves:
            if w.id == wave_id:
                return w
        raise InvalidInput([Problem(str(self._path or self.name), "waves", f"no wave {wave_id!r} (waves: {', '.join(w.id for w in self.waves)})")])

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise InvalidInput([Problem(str(self._path or self.name), "steps", f"no step {step_id!r}")])

    def playbooks(self) -> list[tuple[str, str]]:
        """(key path, playbook name) of every playbook the runbook references, in order."""
        return playbook_refs(list(enumerate(self.steps)))


def playbook_refs(steps: list[tuple[int, Step]]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for i, s in steps:
        for field_name in ("do", "undo"):
            action = getattr(s, field_name)
            if isinstance(action, PlaybookAction):
                found.append((f"steps[{i}].{field_name}.playbook", action.playbook))
        for j, g in enumerate(s.gates):
            if isinstance(g, ReconcileGate):
                found.append((f"steps[{i}].gates[{j}].reconcile.playbook", g.reconcile.playbook))
            elif isinstance(g, SmokeGate) and isinstance(g.smoke, PlaybookAction):
                found.append((f"steps[{i}].gates[{j}].smoke.playbook", g.smoke.playbook))
    return found


# --- selecting units ---------------------------------------------------------------------------


def select_units(estate: Estate, selector: Selector) -> set[str]:
    """The codes of the units `selector` (and not its `exclude`) chooses; see the module doc."""
    chosen = _match(estate, selector)
    exclude = getattr(selector, "exclude", None)
    if exclude is not None:
        chosen -= _match(estate, exclude)
    return chosen


def _match(estate: Estate, s: Selector) -> set[str]:
    chosen: set[str] = set()
    if s.kinds or s.provinces or s.districts:
        kinds, provinces, districts = set(s.kinds), set(s.provinces), {nfc(d) for d in s.districts}
        for u in estate.units.values():
            if kinds and u.kind not in kinds:
                continue
            if provinces and u.province not in provinces:
                continue
            if districts and not (districts & _unit_districts(u)):
                continue
            chosen.add(u.code)
    chosen.update(c for c in s.codes if c in estate.units)
    if s.pilot:
        chosen.update(c for c in estate.pilot_sets.get(s.pilot, []) if c in estate.units)
    return chosen


def _unit_districts(unit: Any) -> set[str]:
    return set(unit.districts) | {o.district for o in unit.lineage}


def known_districts(estate: Estate) -> set[str]:
    found: set[str] = set()
    for u in estate.units.values():
        found |= _unit_districts(u)
    return found


# --- loading -----------------------------------------------------------------------------------


class _DuplicateKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_DuplicateKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_index(node: yaml.Node | None, path: tuple[Any, ...] = (), into: dict[tuple[Any, ...], int] | None = None) -> dict[tuple[Any, ...], int]:
    """Key path (as pydantic locs, tags left out) -> 1-based line of that value in the file."""
    into = {} if into is None else into
    if node is None:
        return into
    into.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                into[path + (k.value,)] = k.start_mark.line + 1
                _line_index(v, path + (k.value,), into)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, path + (i,), into)
    return into


def key_path(loc: tuple[Any, ...]) -> str:
    """('waves', 1, 'batch') -> 'waves[1].batch'; union tags such as '<playbook>' are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("<"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _leaves(tp: Any) -> list[Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _leaves(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [leaf for a in get_args(tp) for leaf in _leaves(a)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def valid_keys(loc: tuple[Any, ...], root: type[BaseModel] = None) -> list[str]:  # type: ignore[assignment]
    """The keys a mapping at `loc` (pydantic loc, tags included) may hold."""
    current: list[Any] = [root or Runbook]
    for part in loc:
        following: list[Any] = []
        for tp in current:
            for leaf in _leaves(tp):
                if isinstance(part, int):
                    if get_origin(leaf) is list:
                        following.append(get_args(leaf)[0])
                elif isinstance(part, str) and part.startswith("<"):
                    if _is_model(leaf) and leaf in _TAGGED.get(part, ()):
                        following.append(leaf)
                elif _is_model(leaf) and part in leaf.model_fields:
                    following.append(leaf.model_fields[part].annotation)
        current = following
    keys: list[str] = []
    for tp in current:
        for leaf in _leaves(tp):
            if _is_model(leaf):
                keys.extend(k for k in leaf.model_fields if k not in keys)
    return keys


def _suggest(word: str, options: list[str] | set[str] | tuple[str, ...]) -> str:
    match = difflib.get_close_matches(str(word), sorted(options), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


class _Problems:
    def __init__(self, file: Path, lines: dict[tuple[Any, ...], int]):
        self.file = str(file)
        self.lines = lines
        self._found: list[tuple[int, int, Problem]] = []

    @property
    def items(self) -> list[Problem]:
        """In file order (by line), then in the order found."""
        return [p for _, _, p in sorted(self._found, key=lambda t: (t[0], t[1]))]

    def add(self, loc: tuple[Any, ...], message: str) -> None:
        bare = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("<")))
        line = None
        for cut in range(len(bare), -1, -1):
            if bare[:cut] in self.lines:
                line = self.lines[bare[:cut]]
                break
        suffix = f" (line {line})" if line else ""
        self._found.append((line or 0, len(self._found), Problem(self.file, key_path(loc) or "(top)", message + suffix)))

    def pydantic(self, err: ValidationError) -> None:
        for e in err.errors():
            loc = tuple(e["loc"])
            kind = e["type"]
            if kind == "extra_forbidden":
                options = valid_keys(loc[:-1])
                message = f"unknown key {loc[-1]!r}{_suggest(loc[-1], options)}"
                if options:
                    message += f" (valid keys: {', '.join(options)})"
            elif kind in ("action_kind", "gate_kind"):
                given = e.get("input")
                kinds = ACTION_KINDS if kind == "action_kind" else GATE_KINDS
                message = e["msg"]
                if isinstance(given, dict):
                    present = [k for k in given if k in kinds]
                    if len(present) > 1:
                        message += f" (this one has {', '.join(present)})"
                    else:
                        for k in given:
                            hint = _suggest(k, kinds)
                            if hint:
                                message += f"; unknown key {k!r}{hint}"
                                break
            elif kind == "missing":
                message = f"missing key {loc[-1]!r}" if loc else "missing"
            elif kind == "value_error":
                message = e["msg"].removeprefix("Value error, ")
            else:
                message = e["msg"]
            self.add(loc, message)


def _read(path: Path) -> tuple[bytes, Any, dict[tuple[Any, ...], int]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput([Problem(str(path), "", "runbook file not found")]) from None
    except IsADirectoryError:
        raise InvalidInput([Problem(str(path), "", "is a folder, not a runbook file")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput([Problem(str(path), "", f"not UTF-8: {exc.reason} at byte {exc.start}")]) from None
    try:
        raw = yaml.load(text, Loader=_DuplicateKeyLoader)  # noqa: S506 - a SafeLoader subclass
        lines = _line_index(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput([Problem(str(path), where, f"not valid YAML: {problem}")]) from None
    except (ValueError, TypeError) as exc:  # e.g. a date like 2025-13-45, which YAML resolves as a timestamp
        raise InvalidInput([Problem(str(path), _bad_scalar_line(text), f"not a valid value: {exc}")]) from None
    return data, raw, lines


def _bad_scalar_line(text: str) -> str:
    """The line of the first scalar that YAML cannot construct (an impossible date)."""
    loader = yaml.SafeLoader(text)
    try:
        stack = [loader.get_single_node()]
        while stack:
            node = stack.pop(0)
            if isinstance(node, yaml.ScalarNode):
                try:
                    loader.construct_object(node, deep=True)
                except (ValueError, TypeError, yaml.YAMLError):
                    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"
            elif isinstance(node, yaml.MappingNode):
                stack.extend(x for pair in node.value for x in pair)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
    finally:
        loader.dispose()
    return "(document)"


def load_runbook(path: Path | str, estate: Estate, root: Path | str) -> Runbook:
    """Load and validate a runbook against `estate` and `root/playbooks/`; raise InvalidInput
    listing every problem (file, key path, line)."""
    path = Path(path)
    root = Path(root)
    data, raw, lines = _read(path)
    problems = _Problems(path, lines)
    if not isinstance(raw, dict):
        raise InvalidInput([Problem(str(path), "(top)", "a runbook is a mapping with name, system, on_failure, steps, waves")])
    raw = _nfc_tree(raw)
    try:
        runbook = Runbook.model_validate(raw)
    except ValidationError as err:
        problems.pydantic(err)
        runbook = None
    # Checks that need the estate and the files run on whatever parsed, so that one load
    # reports the model's problems and these together.
    _check_against_estate(raw, estate, problems)
    if runbook is not None:
        steps, waves, finals = list(enumerate(runbook.steps)), list(enumerate(runbook.waves)), list(enumerate(runbook.final_gates))
    else:
        # The whole did not parse: still check every step, wave and final gate that does.
        steps, waves, finals = _each(raw.get("steps"), Step), _each(raw.get("waves"), Wave), _each(raw.get("final_gates"), FinalGate)
    digests = _check_declarations(steps, waves, finals, estate, root, problems)
    if problems.items:
        raise InvalidInput(problems.items)
    assert runbook is not None
    runbook._path = path
    runbook._digest = hashlib.sha256(data).hexdigest()
    runbook._playbook_digests = digests
    return runbook


def _nfc_tree(value: Any) -> Any:
    if isinstance(value, str):
        return nfc(value)
    if isinstance(value, list):
        return [_nfc_tree(v) for v in value]
    if isinstance(value, dict):
        return {nfc(k) if isinstance(k, str) else k: _nfc_tree(v) for k, v in value.items()}
    return value


def _check_against_estate(raw: dict[str, Any], estate: Estate, problems: _Problems) -> None:
    """Selectors and the system, checked on the raw mapping so they report even when another
    part of the runbook failed to parse."""
    system = raw.get("system")
    if isinstance(system, str) and system not in estate.systems:
        problems.add(("system",), f"unknown shared system {system!r}{_suggest(system, estate.systems)} (known: {', '.join(estate.systems)})")
    waves = raw.get("waves")
    if not isinstance(waves, list):
        return
    districts = known_districts(estate)
    for i, wave in enumerate(waves):
        if not isinstance(wave, dict):
            continue
        try:
            window = Window.model_validate(wave.get("window"))
        except ValidationError:
            pass  # reported by the whole-runbook validation
        else:
            if window.deadline < window.not_before:
                problems.add(("waves", i, "window", "deadline"), f"deadline {window.deadline} is before not_before {window.not_before}")
        if not isinstance(wave.get("select"), dict):
            continue
        select = wave["select"]
        parts: list[tuple[tuple[Any, ...], dict[str, Any]]] = [(("waves", i, "select"), select)]
        if isinstance(select.get("exclude"), dict):
            parts.append((("waves", i, "select", "exclude"), select["exclude"]))
        for loc, sel in parts:
            for key, known, what in (
                ("kinds", UNIT_KINDS, "kind"),
                ("provinces", PROVINCES, "former province"),
                ("districts", districts, "district"),
                ("codes", estate.units, "unit"),
            ):
                values = sel.get(key)
                if not isinstance(values, list):
                    continue
                for j, v in enumerate(values):
                    if isinstance(v, str) and v not in known:
                        listing = f" (known: {', '.join(known)})" if len(known) <= 12 else ""
                        problems.add(loc + (key, j), f"unknown {what} {v!r}{_suggest(v, known)}{listing}")
            pilot = sel.get("pilot")
            if isinstance(pilot, str) and pilot not in estate.pilot_sets:
                known_sets = ", ".join(estate.pilot_sets) or "none"
                problems.add(loc + ("pilot",), f"unknown pilot set {pilot!r}{_suggest(pilot, estate.pilot_sets)} (pilot sets in {estate.root.name}/estate.yml: {known_sets})")


def _each(items: Any, model: type[BaseModel]) -> list[tuple[int, Any]]:
    parsed: list[tuple[int, Any]] = []
    if isinstance(items, list):
        for i, item in enumerate(items):
            try:
                parsed.append((i, model.model_validate(item)))
            except ValidationError:
                pass  # already reported, with its path, by the whole-runbook validation
    return parsed


def _check_declarations(
    steps: list[tuple[int, Step]],
    waves: list[tuple[int, Wave]],
    finals: list[tuple[int, FinalGate]],
    estate: Estate,
    root: Path,
    problems: _Problems,
) -> dict[str, str]:
    """Semantic checks on what parsed; returns the referenced playbooks' digests."""
    wave_by_index = dict(waves)
    seen_steps: dict[str, int] = {}
    for i, step in steps:
        if step.id in seen_steps:
            problems.add(("steps", i, "id"), f"duplicate step id {step.id!r} (first at steps[{seen_steps[step.id]}])")
        seen_steps.setdefault(step.id, i)
        if step.changes_state and step.undo is None:
            problems.add(("steps", i), f"step {step.id!r} changes state but has no 'undo' (give one, or 'changes: false' if it is read-only)")
        if step.undo is not None and step.undo.kind == "approval":
            problems.add(("steps", i, "undo"), "an approval cannot undo a step")
    # Playbooks must exist under root/playbooks/ and stay inside it.
    digests: dict[str, str] = {}
    base = (root / PLAYBOOKS_DIR).resolve()
    for where, name in playbook_refs(steps):
        loc = _loc_of(where)
        target = (base / name).resolve()
        if not target.is_relative_to(base):
            problems.add(loc, f"playbook {name!r} is outside {PLAYBOOKS_DIR}/")
            continue
        if not target.is_file():
            available = sorted(p.name for p in base.glob("*.yml")) if base.is_dir() else []
            problems.add(loc, f"no playbook {name!r} under {base}{_suggest(name, available)}")
            continue
        if name not in digests:
            digests[name] = hashlib.sha256(target.read_bytes()).hexdigest()

    # Waves: unique ids, every unit in exactly one wave.
    seen_waves: dict[str, int] = {}
    owner: dict[str, int] = {}
    twice: dict[tuple[int, int], list[str]] = {}
    for i, wave in waves:
        if wave.id in seen_waves:
            problems.add(("waves", i, "id"), f"duplicate wave id {wave.id!r} (first at waves[{seen_waves[wave.id]}])")
        seen_waves.setdefault(wave.id, i)
        if wave.select.empty:
            problems.add(("waves", i, "select"), "selects nothing: give kinds, provinces, districts, codes or pilot")
        if wave.select.exclude is not None and wave.select.exclude.empty:
            problems.add(("waves", i, "select", "exclude"), "excludes nothing: give kinds, provinces, districts, codes or pilot, or drop it")
        for code in sorted(select_units(estate, wave.select), key=_order_key(estate)):
            if code in owner:
                twice.setdefault((owner[code], i), []).append(code)
            else:
                owner[code] = i
    for (first, second), codes in twice.items():
        shown = ", ".join(codes[:20]) + (f" and {len(codes) - 20} more" if len(codes) > 20 else "")
        problems.add(
            ("waves", second, "select"),
            f"{len(codes)} unit(s) already in wave {wave_by_index[first].id!r} (waves[{first}]): {shown}; "
            "exclude them from one of the two waves",
        )
    # Approval gate names: the engine records approvals by name, so each names one point.
    approvals: dict[str, str] = {}

    def claim(name: str | None, loc: tuple[Any, ...]) -> None:
        if name is None:
            return
        if name in approvals:
            problems.add(loc, f"approval gate {name!r} is already used at {approvals[name]}")
        else:
            approvals[name] = key_path(loc)

    for i, step in steps:
        if isinstance(step.do, ApprovalAction):
            claim(step.do.approval.gate, ("steps", i, "do", "approval", "gate"))
        for j, g in enumerate(step.gates):
            if isinstance(g, ApprovalGate):
                claim(g.approval.gate, ("steps", i, "gates", j, "approval", "gate"))
    for i, wave in waves:
        claim(wave.approve_before, ("waves", i, "approve_before"))
        claim(wave.approve_after, ("waves", i, "approve_after"))
    seen_final: set[str] = set()
    for i, gate in finals:
        if gate.id in seen_final:
            problems.add(("final_gates", i, "id"), f"duplicate final gate id {gate.id!r}")
        seen_final.add(gate.id)
        if gate.deadline and gate.not_before and gate.deadline < gate.not_before:
            problems.add(("final_gates", i, "deadline"), f"deadline {gate.deadline} is before not_before {gate.not_before}")
        if gate.approval is not None:
            claim(gate.approval.gate, ("final_gates", i, "approval", "gate"))
    return digests


def _loc_of(where: str) -> tuple[Any, ...]:
    loc: list[Any] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", where):
        loc.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(loc)


def _order_key(estate: Estate):  # noqa: ANN202
    """Stable unit order: departments and boards first (by code), then wards, communes and the
    special zone by their sequence number in units.csv."""

    def key(code: str) -> tuple[int, int, str]:
        u = estate.units[code]
        return (1 if u.is_commune_level else 0, u.seq or 0, code)

    return key


unit_order = _order_key
