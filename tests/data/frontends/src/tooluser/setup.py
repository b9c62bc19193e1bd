"""torch's BuildExtension shape: the build runs a program (ninja) found on PATH, which only the
pinned `ninja` wheel's scripts provide, and records what it ran."""

import shutil
import subprocess

from setuptools import setup

ninja = shutil.which("ninja")
if ninja is None:
    raise SystemExit("ninja is not on PATH")
version = subprocess.check_output([ninja, "--version"], text=True).strip()
with open("tooluser/_ninja.py", "w") as f:
    f.write(f"VERSION = {version!r}\n")
setup(name="tooluser", version="1.0", packages=["tooluser"])
