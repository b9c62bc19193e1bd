"""A shared binary cache on any OCI registry: signed store entries as OCI artifacts.

Modules: ref (references, media types, annotations), signing (keys, signatures), results
(hits, misses, near misses), entry (an entry as a tar layer), client (`BinaryCache`: one
repository), policy (several caches, closures, miss classification). This package face
re-exports their public names.

One store entry (a build output or a fixed-output input) is one OCI image manifest:

    tag        <build key>                      (32 base32 characters: a valid OCI tag)
    alias tag  <name>--<version>--<build key>   (build outputs only: lets `why` find near misses
                                                 by listing tags, without reading every manifest)
    manifest   mediaType  application/vnd.oci.image.manifest.v1+json
               artifactType application/vnd.dev.planner.store-entry.v1
               config     application/vnd.dev.planner.preimage.v1+json: the canonical JSON
                          preimage whose key is the tag (resolved preimage, or {fixed, unpacked})
               layers[0]  application/vnd.oci.image.layer.v1.tar+gzip: the entry's content as a
                          deterministic tar (planner.oci.layer: sorted, uid 0, mtime 0, pinned
                          gzip), so equal content gives equal blobs, shared across entries
               annotations dev.planner.* (key, input key, digest, kind, name, version, variant,
                          content kind) and dev.planner.signatures

The signature (ed25519, keys in Nix's `name:base64` format) covers the canonical JSON of
{format, build_key, input_key, kind, name, version, content, digest, layer_digest,
config_digest}: the blob digests bind the content and the preimage, the tree digest binds
what the store will hold. An entry is used only if a signature by a trusted key verifies;
then its layer is pulled by digest (sha256 checked), unpacked into the store's tmp/, its tree
hash checked against the signed digest and its preimage against the key, and only then is it
added to the store (atomic rename under the key's lock). Blobs go up first and the manifest
last, so a reader never sees a half-pushed entry.
"""

from __future__ import annotations

from .ref import (  # noqa: F401
    A_CONTENT,
    A_DIGEST,
    A_INPUT_KEY,
    A_KEY,
    A_KIND,
    A_NAME,
    A_SIGNATURES,
    A_VARIANT,
    A_VERSION,
    CacheError,
    CacheRef,
    ANN,
    ARTIFACT_TYPE,
    LAYER_EPOCH,
    MEDIA_MANIFEST,
    MEDIA_PREIMAGE,
    MISS_REASONS,
    SIGN_FORMAT,
)
from .signing import (  # noqa: F401
    Signer,
    TrustedKeys,
    generate_key,
    signed_payload,
)
from .results import (  # noqa: F401
    CacheHit,
    CacheMiss,
    NearMiss,
)
from .entry import (  # noqa: F401
    alias_prefix,
    unpack_entry,
)
from .client import (  # noqa: F401
    BinaryCache,
    _ssl_context,
)
from .policy import (  # noqa: F401
    MissReport,
    classify_miss,
    lookup_any,
    pull_closure,
    push_closure,
    push_run,
    substitute,
)
