"""What a cache lookup finds: a verified hit, a miss and why, near misses for `why`."""

from __future__ import annotations

from typing import Optional

import attrs

from .ref import CacheRef

@attrs.frozen
class NearMiss:
    """The cache holds the same node (name + version) built for another variant or inputs."""

    key: str
    variant: dict
    axes: list[tuple[str, object, object]]  # (axis, theirs, ours) for each differing variant axis
    fields: list[str] = attrs.field(factory=list)  # other differing preimage fields (same variant)

    def describe(self) -> str:
        if self.axes:
            return "; ".join(f"{a}: cache has {_show(t)}, wanted {_show(o)}" for a, t, o in self.axes)
        if self.fields:
            return "same variant, other " + ", ".join(self.fields[:6]) + (" …" if len(self.fields) > 6 else "")
        return f"same node under key {self.key}"


def _show(v: object) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v)


@attrs.frozen
class CacheHit:
    cache: str  # CacheRef text
    key: str
    manifest_digest: str
    layer_digest: str
    layer_size: int
    config_digest: str
    digest: str  # tree hash of the content
    kind: str  # build | fixed
    name: str
    version: Optional[str]
    input_key: str
    content: str  # dir | file | symlink
    signer: str
    variant: dict = attrs.field(factory=dict)

    ok = True


@attrs.frozen
class CacheMiss:
    cache: str
    key: str
    reason: str  # absent | unsigned | untrusted | bad-signature | bad-entry | unreachable
    detail: str = ""
    near_miss: Optional[list[NearMiss]] = None

    ok = False

    def line(self) -> str:
        text = f"{self.cache}: {self.reason}" + (f" ({self.detail})" if self.detail else "")
        if self.near_miss:
            text += "; near miss: " + self.near_miss[0].describe()
        return text
