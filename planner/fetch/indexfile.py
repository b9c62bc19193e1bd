"""One file of a PEP 503/691 simple index page: what the index page reader produces and the
metadata reader and the wheel chooser consume (its own module so that neither imports the other)."""

from __future__ import annotations

from typing import NamedTuple, Optional


class IndexFile(NamedTuple):
    filename: str
    url: str
    sha256: Optional[str]  # None where the index gives no sha256 (then only the lock pins it)
    upload_time: Optional[str] = None  # PEP 700, as the index wrote it
    requires_python: Optional[str] = None
    yanked: bool | str = False  # PEP 592: False, True or the reason
    metadata_sha256: Optional[str] = None  # PEP 714 core metadata beside the file ("" = present, no hash)
