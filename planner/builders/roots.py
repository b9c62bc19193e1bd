"""The root-filesystem builders: `debian-rootfs` (pinned .debs unpacked, no scripts run) and
`image-rootfs` (a pinned registry image's layers applied), for builds that run inside them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TextIO

from ..derivation import BuildRequest, Node
from ..errors import BuildError, UnsafeTree
from ..oci.rootfs import assemble_rootfs
from ..oci.unpack import apply_layer
from ..safetree import MAX_METADATA, Tree, blob_hex

# Debian's names for the OCI architectures planner builds for.
_DEB_ARCH = {"amd64": "amd64", "arm64": "arm64"}


def debian_rootfs(node: Node, req: BuildRequest, out: Path, log: TextIO) -> None:
    """The node's `.deb` inputs unpacked into `out` for `node.variant.platform` (no scripts run)."""
    platform = node.variant.platform or node.variant.host  # a build root is per build platform
    if not platform:
        raise BuildError(node.label(), "the debian-rootfs builder needs the platform or host axis "
                                       "(axes = [\"platform\"] or [\"host\"])")
    arch = _DEB_ARCH.get(platform.split("/")[1] if "/" in platform else platform)
    if arch is None:
        raise BuildError(node.label(), f"no Debian architecture for platform {platform}")
    from ..safetree import regular_files

    debs: list[Path] = []
    wheels: list[tuple[str, Path]] = []
    for name, entry in sorted(req.inputs.items()):
        files = regular_files(entry.path, where=f"input {name}")
        filename = node.inputs[name].filename or entry.path.name
        if filename.endswith(".whl") and len(files) == 1 and not _is_deb(files[0]):
            wheels.append((filename, files[0]))
            continue
        found = [p for p in files if _is_deb(p)]
        if not found:
            raise BuildError(node.label(), f"input {name} is neither a .deb (kind = \"apt\") nor a wheel")
        debs.extend(found)
    if not debs:
        raise BuildError(node.label(), "no .deb inputs: list the packages as [inputs.NAME] kind = \"apt\"")
    rootfs = assemble_rootfs(debs, out, arch=arch)
    for pkg in rootfs.packages:
        log.write(f"unpacked {pkg.package} {pkg.version} ({pkg.architecture})\n")
    log.write(f"merged-/usr links: {', '.join(rootfs.merged_usr)}\n")
    links = node.preimage.builder.settings.get("links", {})
    if not isinstance(links, dict):
        raise BuildError(node.label(), "settings.links must be a table of path = target")
    for path, target in sorted(links.items()):
        add_link(out, path, target, where=node.label())
        log.write(f"link /{path} -> {target}\n")
    _install_into_rootfs(node, req, out, wheels, log)


def add_link(root: Path, path: str, target: str, *, where: str) -> None:
    """A symlink that a maintainer script (update-alternatives) would have made. The link's own
    path must be new and lie inside the root, under real directories; its target only ever
    resolves inside the sandbox, so any relative name in the same folder is fine."""
    parts = [p for p in str(path).split("/") if p]
    if (not isinstance(target, str) or not parts or str(path).startswith("/") or ".." in parts
            or "/" in target or target in ("", ".", "..") or "\0" in target + str(path)):
        raise BuildError(where, f"settings.links: {path!r} -> {target!r} must be a relative path inside the root "
                                "to a name in the same folder")
    parent = root
    for part in parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or not parent.is_dir():
            raise BuildError(where, f"settings.links: /{'/'.join(parts)} is not under a real directory of the root")
    link = parent / parts[-1]
    if link.exists() or link.is_symlink():
        raise BuildError(where, f"settings.links: /{'/'.join(parts)} already exists")
    if not (parent / target).is_file():
        raise BuildError(where, f"settings.links: /{'/'.join(parts)} -> {target}: no such file in the root")
    os.symlink(target, link)


def _install_into_rootfs(node: Node, req: BuildRequest, out: Path, wheels: list[tuple[str, Path]],
                         log: TextIO) -> None:
    """Wheels installed as pip would at /usr/local (a base with torch), then dependencies'
    outputs copied to the paths `settings.place` names (a CUDA toolkit at usr/local/cuda)."""
    import shutil
    import tempfile

    from ..oci.wheels import install_wheel

    settings = node.preimage.builder.settings
    site = str(settings.get("site-packages", "/usr/local/lib/python3.11/dist-packages"))
    for filename, path in sorted(wheels):
        # installer reads the name and version from the file name: give it the wheel's own.
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            link = Path(tmp) / filename
            os.symlink(path, link)
            # Installed alone into an empty folder (installer's writes follow links, and the
            # .debs unpacked here may ship any link), then merged without following one.
            one = Path(tmp) / "root"
            one.mkdir()
            installed = install_wheel(link, one, site_packages=site)
            with Tree(one, where=f"wheel {filename}") as src, Tree(out, where=f"{node.label()}: the root filesystem") as root:
                root.copy_from(src, move=True)
        log.write(f"installed {filename} ({len(installed.files)} files)\n")
    place = settings.get("place", {})
    if not isinstance(place, dict):
        raise BuildError(node.label(), "settings.place must be a table of dependency = path")
    for mount, rel in sorted(place.items()):
        parts = Path(str(rel)).parts
        if not parts or str(rel).startswith("/") or any(p in ("..", ".") for p in parts):
            raise BuildError(node.label(), f"settings.place.{mount}: {rel!r} is not a relative path inside the root filesystem")
        entry = req.deps.get(mount)
        if entry is None:
            raise BuildError(node.label(), f"settings.place names {mount!r}, which is not a dependency of this recipe")
        dest = out
        for part in parts[:-1]:  # real directories only: never through a link a .deb shipped
            dest = dest / part
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                raise BuildError(node.label(), f"settings.place.{mount}: /{dest.relative_to(out)} is not a directory")
            dest.mkdir(mode=0o755, exist_ok=True)
        dest = dest / parts[-1]
        if os.path.lexists(dest):
            raise BuildError(node.label(), f"settings.place.{mount}: {rel} exists in the root filesystem already")
        shutil.copytree(entry.path, dest, symlinks=True)
        log.write(f"placed {mount} at /{rel}\n")


def _is_deb(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"!<arch>\n"


def image_rootfs(node: Node, req: BuildRequest, out: Path, log: TextIO) -> None:
    """The root filesystem of a pinned registry image, for builds that run inside it."""
    (name, entry), = sorted(req.inputs.items())
    where = f"image input {name}"
    with Tree(entry.path, where=where) as src, Tree(out, where=f"{name} root filesystem") as root:
        manifest = json.loads(src.read_bytes("manifest.json", limit=MAX_METADATA))
        for layer in manifest.get("layers", []):
            digest = layer["digest"]
            with src.open_file(f"blobs/sha256/{blob_hex(digest, where)}") as blob:
                try:
                    apply_layer(blob, root)
                except UnsafeTree as e:
                    raise UnsafeTree(e.message, where=f"{where} layer {digest}") from None
            log.write(f"applied layer {digest}\n")
    if not any(out.iterdir()):
        raise BuildError(node.label(), f"image input {name} has no layers")
