"""Preimage changes and the root cause each stands for: the pure classification under `planner why`.

`diff_preimages` lists what differs between two preimages, field by field; `classify` says which
kind of root cause a change is (a source, a patch, an environment variable, a host package, …)
or that it is propagation (a changed dependency). `planner.causes` folds these into rebuild
explanations."""

from __future__ import annotations

from typing import Optional

import attrs

@attrs.frozen
class Change:
    path: tuple[str, ...]
    old: object
    new: object


@attrs.frozen
class Cause:
    kind: str  # source, input, patch, env, setting, script, builder, variant, host-package, epoch, version, …
    recipe: str
    field: str
    old: Optional[str]
    new: Optional[str]
    lock_entry: Optional[str] = None
    file: Optional[str] = None
    line: Optional[int] = None
    recipe_file: Optional[str] = None  # where the recipe declares a patch whose `file` is the patch
    recipe_line: Optional[int] = None

    @property
    def ident(self) -> tuple:
        return (self.kind, self.recipe, self.field, self.old, self.new)

    def describe(self) -> str:
        what = {
            "source": f"source of {self.recipe}",
            "input": f"input {self.field} of {self.recipe}",
            "patch": f"patch {self.field} of {self.recipe}",
            "env": f"environment variable {self.field} of {self.recipe}",
            "setting": f"build setting {self.field} of {self.recipe}",
            "script": f"build script of {self.recipe}",
            "builder": f"builder of {self.recipe} ({self.field})",
            "variant": (f"variant axis {self.field} of {self.recipe}" if self.recipe else
                        f"{'CUDA arch list' if self.field == 'cuda' else self.field} of every node on that axis "
                        f"(set.toml)"),
            "cuda-variant": f"CUDA variant {self.field} (set.toml [cuda])",
            "host-package": f"host package {self.field} (used by {self.recipe}; build-root = \"host\": NOT HERMETIC)",
            "epoch": "SOURCE_DATE_EPOCH",
            "version": f"version of {self.recipe}",
            "deps": f"dependencies of {self.recipe} ({self.field})",
            "image": f"image setting {self.field} of {self.recipe}",
            "sandbox": (f"sandbox of {self.recipe} (its build.impure, or realise --sandbox)" if self.recipe
                        else "sandbox of every node (realise --sandbox)"),
            "resources": f"[resources] {self.field} of {self.recipe}",
            "new": (f"{self.recipe} is new to the closure (not in the run compared with: a new recipe, a "
                    "renamed one, or one a dependency brought in)") if self.recipe
                   else "first recorded realise: nothing earlier to compare with",
            "attestation": (f"attestation of {self.recipe}: the lock it records changed ({self.field}); its "
                            "layers and index are the same, only its attestations are new"),
            "format": "planner derivation format",
        }.get(self.kind, f"{self.kind} {self.field} of {self.recipe}")
        if self.kind == "host-package" and self.field == "(all host)":
            what = (f"host packages of {self.recipe} (the host's /usr gave way to a build root)"
                    if self.new == "absent" else
                    f"host packages of {self.recipe} (build-root = \"host\": NOT HERMETIC)")
        if self.old is None and self.new is None:
            return what
        return f"{what}: {short_value(self.old)} -> {short_value(self.new)}"


def short_value(v: object) -> str:
    if v is None:
        return "(none)"
    s = v if isinstance(v, str) else repr(v)
    if s.startswith("blake3:") and len(s) > 20:
        return s[:19] + "…"
    return s if len(s) <= 60 else s[:57] + "…"


# -- pure core -------------------------------------------------------------------------------

_MISSING = object()


def diff_preimages(old: dict, new: dict) -> list[Change]:
    """Leaf-level differences between two preimages. Patches compare by name."""
    out: list[Change] = []

    def walk(a: object, b: object, path: tuple[str, ...]) -> None:
        if path == ("patches",) and isinstance(a, list) and isinstance(b, list):
            pa = {p["name"]: p for p in a}
            pb = {p["name"]: p for p in b}
            for name in sorted(pa.keys() | pb.keys()):
                if pa.get(name) != pb.get(name):
                    out.append(Change(("patches", name), pa.get(name, {}).get("tree"), pb.get(name, {}).get("tree")))
            if [p["name"] for p in a if p["name"] in pb] != [p["name"] for p in b if p["name"] in pa]:
                out.append(Change(("patches", "(order)"), [p["name"] for p in a], [p["name"] for p in b]))
            return
        if isinstance(a, dict) and isinstance(b, dict) and path[:1] != ("variant",):
            for k in sorted(a.keys() | b.keys()):
                walk(a.get(k, _MISSING), b.get(k, _MISSING), path + (k,))
            return
        if isinstance(a, dict) and isinstance(b, dict):  # variant: one change per axis
            for k in sorted(a.keys() | b.keys()):
                if a.get(k) != b.get(k):
                    out.append(Change(path + (k,), a.get(k), b.get(k)))
            return
        if a != b:
            out.append(Change(path, None if a is _MISSING else a, None if b is _MISSING else b))

    walk(old, new, ())
    return out


def fmt_value(v: object) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, list):
        return "+".join(str(x) for x in v) if all(isinstance(x, str) for x in v) else repr(v)
    return v if isinstance(v, str) else repr(v)


def _presence(v: object) -> str:
    if v is None:
        return "absent"
    if isinstance(v, (dict, list)):
        return f"{len(v)} entry" if len(v) == 1 else f"{len(v)} entries"
    return str(v)


def _sandbox(impure: object) -> Optional[str]:
    """A preimage's `impure` as what a user chose: an impure build is one run without the sandbox."""
    return None if impure is None else "off (impure)" if impure else "on"


def classify(change: Change, recipe: str) -> Optional[Cause]:
    """The root cause a preimage change stands for, or None for propagation (a changed dep)."""
    p = change.path
    old, new = fmt_value(change.old), fmt_value(change.new)
    head = p[0]
    if len(p) == 1 and head in ("inputs", "patches", "env", "variant", "host"):
        # The whole field appeared or went (a set moved from the host's /usr to a build root
        # drops every host package at once): one cause for the field, its values summarised.
        return Cause("host-package" if head == "host" else head, recipe, f"(all {head})",
                     _presence(change.old), _presence(change.new))
    if head == "deps":
        if change.old is not None and change.new is not None:
            return None  # propagation
        return Cause("deps", recipe, p[1] if len(p) > 1 else "", "absent" if change.old is None else "present",
                     "absent" if change.new is None else "present")
    if head == "inputs":
        name = p[1]
        kind = "source" if name == "source" else "input"
        return Cause(kind, recipe, name, old, new, lock_entry=f"{recipe}/{name}")
    if head == "patches":
        name = p[1]
        return Cause("patch", recipe, name, old, new,
                     lock_entry=None if name == "(order)" else f"{recipe}/patch/{name}")
    if head == "env":
        return Cause("env", recipe, p[1], old, new)
    if head == "builder":
        if len(p) > 1 and p[1] == "settings":
            return Cause("setting", recipe, ".".join(p[2:]) or "settings", old, new)
        if len(p) > 1 and p[1] == "script":
            return Cause("script", recipe, "script", old, new)
        return Cause("builder", recipe, ".".join(p[1:]), old, new)
    if head == "variant":
        if change.old is not None and change.new is not None:
            # The node kept the axis and its value moved: set.toml's platforms or [cuda] arch
            # lists, one cause for every node on that axis (not one per recipe).
            return Cause("variant", "", p[1], old, new)
        return Cause("variant", recipe, p[1], old, new)  # the axis came or went: a recipe's axes
    if head == "host":
        return Cause("host-package", recipe, p[1], old, new)
    if head == "source_date_epoch":
        return Cause("epoch", "", "source-date-epoch", old, new)
    if head == "version":
        return Cause("version", recipe, "version", old, new)
    if head == "cuda_variants" and len(p) > 1:
        return Cause("cuda-variant", "", p[1], old, new)  # (one per variant, whatever its platforms)
    if head in ("image", "platforms", "cuda_variants"):
        return Cause("image", recipe, ".".join(p), old, new)
    if head == "impure":
        return Cause("sandbox", recipe, "sandbox", _sandbox(change.old), _sandbox(change.new))
    if head == "resources":
        return Cause("resources", recipe, ".".join(p[1:]), old, new)
    if head == "attest":
        return Cause("attestation", recipe, ".".join(p[1:]), old, new)
    return Cause(head, recipe, ".".join(p), old, new)
