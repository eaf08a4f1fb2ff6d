"""Stage records (spec §3.1) and the stage spec file format (spec §3.3)."""

from __future__ import annotations

import ast
from typing import Any, Literal, Union

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectSet, effect_set_from_json, parse_effect_list
from noether_nix.model.identity import code_hash, signature_id, stage_id
from noether_nix.model.properties import Property, parse_properties
from noether_nix.model.types import NType, parse_type, to_json
from noether_nix.suggest import did_you_mean, unknown_keys

#: Languages this engine runs.
LANGUAGES = ("python", "javascript", "bash")
#: Languages upstream stores (and builds for the browser) that this engine keeps but cannot run:
#: such a stage is stored with its ID and refused, with the reason, when a graph would run it.
STORED_ONLY_LANGUAGES = ("rust",)
_LANGUAGE_ALIASES = {"python3": "python", "py": "python", "js": "javascript", "node": "javascript", "sh": "bash"}
CAPABILITIES = ("Network", "FsRead", "FsWrite", "Gpu", "Llm", "Process")

LifecycleName = Literal["Draft", "Active", "Deprecated", "Tombstone"]


class DeprecatedBody(msgspec.Struct, frozen=True):
    successor_id: str


class Deprecated(msgspec.Struct, frozen=True, rename={"deprecated": "Deprecated"}):
    deprecated: DeprecatedBody


# Externally tagged upstream: "Draft" | "Active" | "Tombstone" | {"Deprecated": {...}}
Lifecycle = Union[Literal["Draft", "Active", "Tombstone"], Deprecated]


def lifecycle_name(lc: Lifecycle) -> LifecycleName:
    return "Deprecated" if isinstance(lc, Deprecated) else lc


def deprecated(successor_id: str) -> Deprecated:
    return Deprecated(DeprecatedBody(successor_id))


class StageSignature(msgspec.Struct, frozen=True):
    input: NType
    output: NType
    effects: EffectSet
    implementation_hash: str


class CostEstimate(msgspec.Struct, frozen=True):
    time_ms_p50: int | None = None
    tokens_est: int | None = None
    memory_mb: int | None = None


class Example(msgspec.Struct, frozen=True):
    input: Any
    output: Any


class Stage(msgspec.Struct, frozen=True, omit_defaults=True):
    """A stored stage; field order is upstream's serialisation order."""

    id: str
    signature: StageSignature
    capabilities: list[str]
    cost: CostEstimate
    description: str
    examples: list[Example]
    lifecycle: Lifecycle
    signature_id: str | None = None
    ed25519_signature: str | None = None
    signer_public_key: str | None = None
    implementation_code: str | None = None
    implementation_language: str | None = None
    ui_style: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    aliases: list[str] = msgspec.field(default_factory=list)
    name: str | None = None
    properties: list[Property] = msgspec.field(default_factory=list)

    @property
    def state(self) -> LifecycleName:
        return lifecycle_name(self.lifecycle)

    @property
    def successor_id(self) -> str | None:
        return self.lifecycle.deprecated.successor_id if isinstance(self.lifecycle, Deprecated) else None

    @property
    def input(self) -> NType:
        return self.signature.input

    @property
    def output(self) -> NType:
        return self.signature.output

    @property
    def effects(self) -> EffectSet:
        return self.signature.effects

    def computed_id(self) -> str:
        s = self.signature
        return stage_id(self.name or "", s.input, s.output, s.effects, s.implementation_hash)

    def computed_signature_id(self) -> str:
        s = self.signature
        return signature_id(self.name or "", s.input, s.output, s.effects)

    def label(self) -> str:
        """How messages name a stage: its name (or description) and short id."""
        return f"{self.name or self.description} ({self.id[:8]})"


_FIELD_ORDER = (
    "id",
    "signature_id",
    "signature",
    "capabilities",
    "cost",
    "description",
    "examples",
    "lifecycle",
    "ed25519_signature",
    "signer_public_key",
    "implementation_code",
    "implementation_language",
    "ui_style",
    "tags",
    "aliases",
    "name",
    "properties",
)
_ALWAYS_WRITTEN = ("ed25519_signature", "signer_public_key")


def stage_to_json(stage: Stage) -> dict[str, Any]:
    """Upstream's serialisation: struct order, signature fields always written."""
    raw = msgspec.to_builtins(stage)
    raw["signature"]["input"] = to_json(stage.signature.input)
    raw["signature"]["output"] = to_json(stage.signature.output)
    raw["signature"]["effects"] = stage.signature.effects.to_json()
    out: dict[str, Any] = {}
    for k in _FIELD_ORDER:
        if k in raw:
            out[k] = raw[k]
        elif k in _ALWAYS_WRITTEN:
            out[k] = None
    return out


def _path_of(err: msgspec.ValidationError, base: str) -> tuple[str, str]:
    msg = str(err)
    if " - at `$" in msg:
        text, _, where = msg.partition(" - at `$")
        return text, base + where.rstrip("`")
    return msg, base


def stage_from_json(value: Any, *, path: str = "stage") -> Stage:
    """Decode a stored Stage JSON (also accepts upstream's ``canonical_id``)."""
    if not isinstance(value, dict):
        raise NoetherError("invalid_stage", "a stage must be a JSON object", path=path)
    value = dict(value)
    if "canonical_id" in value and "signature_id" not in value:
        value["signature_id"] = value.pop("canonical_id")
    sig = value.get("signature")
    if isinstance(sig, dict) and isinstance(sig.get("effects"), dict):
        # BTreeSet semantics: re-sort on read.
        sig = dict(sig)
        sig["effects"] = effect_set_from_json(sig["effects"], path=f"{path}.signature.effects").to_json()
        value["signature"] = sig
    try:
        return msgspec.convert(value, Stage)
    except msgspec.ValidationError as e:
        text, where = _path_of(e, path)
        raise NoetherError("invalid_stage", text, path=where) from None


# ------------------------------------------------------------ spec files


def normalise_language(lang: Any, *, path: str) -> str:
    if not isinstance(lang, str):
        raise NoetherError("invalid_spec", "language must be a string", path=path)
    norm = _LANGUAGE_ALIASES.get(lang.strip().lower(), lang.strip().lower())
    if norm not in LANGUAGES and norm not in STORED_ONLY_LANGUAGES:
        raise NoetherError(
            "unsupported_language",
            f"language {lang!r} is not supported{did_you_mean(norm, LANGUAGES)} (supported: {', '.join(LANGUAGES)})",
            path=path,
        )
    return norm


def check_python_entrypoint(code: str, *, path: str = "implementation") -> None:
    """A Python stage must define a top-level ``def execute(input)`` (or async)."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise NoetherError(
            "invalid_implementation",
            f"Python code does not parse: {e.msg} (line {e.lineno})",
            path=path,
        ) from None
    execute = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "execute":
            execute = node
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            raise NoetherError(
                "invalid_implementation",
                f"remove the `if __name__ == \"__main__\"` block (line {node.lineno}): "
                "the runtime reads stdin and calls execute(input) itself",
                path=path,
            )
    if execute is None:
        raise NoetherError(
            "missing_execute",
            "Python stage must define a top-level `def execute(input)` or `async def execute(input)`",
            path=path,
        )
    args = execute.args
    positional = len(args.posonlyargs) + len(args.args)
    if positional < 1 and args.vararg is None:
        raise NoetherError(
            "invalid_implementation",
            f"`execute` (line {execute.lineno}) must take the input as its first argument",
            path=path,
        )


def _string_list(value: Any, *, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise NoetherError("invalid_spec", "must be an array of strings", path=path)
    return list(value)


def _examples(value: Any, *, path: str) -> list[Example]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise NoetherError("invalid_spec", "examples must be an array", path=path)
    out = []
    for i, ex in enumerate(value):
        if not isinstance(ex, dict) or "input" not in ex or "output" not in ex:
            raise NoetherError(
                "invalid_spec", 'each example needs "input" and "output"', path=f"{path}[{i}]"
            )
        out.append(Example(ex["input"], ex["output"]))
    return out


def _capabilities(value: Any, *, path: str) -> list[str]:
    caps = _string_list(value, path=path)
    for i, c in enumerate(caps):
        if c not in CAPABILITIES:
            raise NoetherError(
                "invalid_spec",
                f"unknown capability {c!r} (known: {', '.join(CAPABILITIES)})",
                path=f"{path}[{i}]",
            )
    return sorted(set(caps), key=CAPABILITIES.index)


#: The fields of the simple spec format (spec §3.3), ``lifecycle`` ("Draft" or "Active") included.
SIMPLE_SPEC_FIELDS = ("name", "description", "input", "output", "effects", "language", "implementation",
                      "examples", "tags", "aliases", "properties", "capabilities", "ui_style", "lifecycle")
#: The lifecycles a spec may ask for (upstream's schema): the rest are reached by transitions.
SPEC_LIFECYCLES = ("Draft", "Active")
_STAGE_FIELDS = (*_FIELD_ORDER, "canonical_id")
_SIGNATURE_FIELDS = ("input", "output", "effects", "implementation_hash")


def is_simple_spec(doc: Any) -> bool:
    """The simple format is any spec that is not a full Stage JSON (which has an ``id`` and a ``signature``).

    Upstream also requires ``name`` and ``implementation``; here a spec that
    misspells one of them is still read as a simple spec, so the error names
    the misspelt key instead of a missing ``id``."""
    return isinstance(doc, dict) and "id" not in doc and "signature" not in doc


def spec_lifecycle(doc: Any, *, path: str = "spec") -> str | None:
    """The lifecycle a spec file asks for (``"Draft"`` or ``"Active"``), or None when it says nothing.

    A simple spec may ask for Draft or Active only; a full Stage JSON's
    lifecycle is checked when it is decoded."""
    if not isinstance(doc, dict) or "lifecycle" not in doc:
        return None
    lc = doc["lifecycle"]
    if lc in SPEC_LIFECYCLES:
        return str(lc)
    if is_simple_spec(doc):
        shown = lc if isinstance(lc, str) else msgspec.json.encode(lc).decode()
        raise NoetherError("invalid_spec", f"unknown lifecycle {shown!r}{did_you_mean(shown, SPEC_LIFECYCLES)} "
                           "(a spec may ask for Draft or Active)", path=f"{path}.lifecycle")
    return None


def stage_from_simple_spec(doc: dict[str, Any], *, path: str = "spec") -> Stage:
    """Build an unsigned Draft stage from the simple spec format."""
    unknown_keys(doc, SIMPLE_SPEC_FIELDS, what="stage spec", path=path, code="invalid_spec")
    spec_lifecycle(doc, path=path)
    if "implementation" not in doc:
        raise NoetherError("invalid_spec", 'missing "implementation" (the stage\'s code, or {"code", "language"})',
                           path=f"{path}.implementation")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise NoetherError("invalid_spec", "name must be a non-empty string", path=f"{path}.name")
    for key in ("input", "output"):
        if key not in doc:
            raise NoetherError("invalid_spec", f'missing "{key}" type', path=f"{path}.{key}")
    input_t = parse_type(doc["input"], path=f"{path}.input")
    output_t = parse_type(doc["output"], path=f"{path}.output")
    effects = parse_effect_list(doc.get("effects"), path=f"{path}.effects")
    impl = doc["implementation"]
    if isinstance(impl, str):
        code = impl
        language = normalise_language(doc.get("language", "python"), path=f"{path}.language")
    elif isinstance(impl, dict):
        if not isinstance(impl.get("code"), str) or "language" not in impl:
            raise NoetherError(
                "invalid_spec",
                'implementation object needs "code" (string) and "language"',
                path=f"{path}.implementation",
            )
        code = impl["code"]
        language = normalise_language(impl["language"], path=f"{path}.implementation.language")
    else:
        raise NoetherError(
            "invalid_spec", "implementation must be code or {code, language}", path=f"{path}.implementation"
        )
    if not code.strip():
        raise NoetherError("invalid_spec", "implementation code is empty", path=f"{path}.implementation")
    if language == "python":
        check_python_entrypoint(code, path=f"{path}.implementation")
    description = doc.get("description", name)
    if not isinstance(description, str):
        raise NoetherError("invalid_spec", "description must be a string", path=f"{path}.description")
    ui_style = doc.get("ui_style")
    if ui_style is not None and not isinstance(ui_style, str):
        raise NoetherError("invalid_spec", "ui_style must be a string", path=f"{path}.ui_style")
    impl_hash = code_hash(code)
    return Stage(
        id=stage_id(name, input_t, output_t, effects, impl_hash),
        signature_id=signature_id(name, input_t, output_t, effects),
        signature=StageSignature(input_t, output_t, effects, impl_hash),
        capabilities=_capabilities(doc.get("capabilities"), path=f"{path}.capabilities"),
        cost=CostEstimate(),
        description=description,
        examples=_examples(doc.get("examples"), path=f"{path}.examples"),
        lifecycle="Draft",
        implementation_code=code,
        implementation_language=language,
        ui_style=ui_style,
        tags=_string_list(doc.get("tags"), path=f"{path}.tags"),
        aliases=_string_list(doc.get("aliases"), path=f"{path}.aliases"),
        name=name,
        properties=parse_properties(doc.get("properties"), path=f"{path}.properties"),
    )


def stage_from_spec(doc: Any, *, path: str = "spec") -> Stage:
    """Parse a spec file: the simple format, or a full Stage JSON.

    A full Stage JSON must carry the ID its content hashes to; upstream takes
    the ID as given, which lets a file claim any identity.
    """
    if is_simple_spec(doc):
        return stage_from_simple_spec(doc, path=path)
    if isinstance(doc, dict):
        unknown_keys(doc, _STAGE_FIELDS, what="stage", path=path, code="invalid_stage")
        if isinstance(doc.get("signature"), dict):
            unknown_keys(doc["signature"], _SIGNATURE_FIELDS, what="stage signature", path=f"{path}.signature",
                         code="invalid_stage")
    stage = stage_from_json(doc, path=path)
    check_identity(stage, path=path)
    if stage.implementation_language == "python" and stage.implementation_code:
        check_python_entrypoint(stage.implementation_code, path=f"{path}.implementation_code")
    return stage


def check_identity(stage: Stage, *, path: str = "stage") -> None:
    want = stage.computed_id()
    if stage.id != want:
        raise NoetherError(
            "id_mismatch",
            f"stage id {stage.id[:16]}… does not match its content (expected {want[:16]}…)",
            path=f"{path}.id",
        )
    if stage.implementation_code is not None and stage.signature.implementation_hash != code_hash(
        stage.implementation_code
    ):
        raise NoetherError(
            "hash_mismatch",
            "implementation_hash does not match sha256 of implementation_code",
            path=f"{path}.signature.implementation_hash",
        )
    if stage.signature_id is not None and stage.signature_id != stage.computed_signature_id():
        raise NoetherError(
            "id_mismatch",
            "signature_id does not match the stage's name, types and effects",
            path=f"{path}.signature_id",
        )
