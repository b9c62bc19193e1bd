"""Built inside the demo's Debian base root filesystem, never on the host: the base has no
compiler and no shell, so finding either means the sandbox leaked the host's /usr."""

import os
import sys

from setuptools import setup

leaks = [p for p in ("/usr/bin/gcc", "/usr/bin/bash", "/usr/local/bin/nvcc") if os.path.exists(p)]
if leaks:
    sys.exit(f"base-probe: built outside the base root filesystem: {leaks} exist")

setup(name="base-probe", version="1.0", packages=["base_probe"])
