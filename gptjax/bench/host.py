"""The machine a benchmark ran on, named in its report: the CPU model, as `lscpu` gives it."""

from __future__ import annotations

import os
import pathlib
import platform
import re
import subprocess


def cpu_model() -> str:
    """The CPU's model name, as `lscpu` (or /proc/cpuinfo) gives it; the architecture if neither."""
    texts = []
    try:
        texts.append(subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                                    env={**os.environ, "LC_ALL": "C"}).stdout)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        texts.append(pathlib.Path("/proc/cpuinfo").read_text())
    except OSError:
        pass
    for text in texts:
        name = parse_model_name(text)
        if name:
            return name
    return platform.processor() or platform.machine()


def parse_model_name(text: str) -> str | None:
    """'Model name: X' (lscpu) or 'model name : X' (/proc/cpuinfo) -> X. A virtual machine's
    name may carry no model number ('AMD EPYC'), and two generations then read alike: the
    family and model numbers of the same text are added to it ('AMD EPYC (family 26, model 2)')."""
    found = re.search(r"^model name\s*:\s*(\S.*?)\s*$", text, re.M | re.I)
    if not found:
        return None
    name = found.group(1)
    family = re.search(r"^(?:cpu )?family\s*:\s*(\d+)\s*$", text, re.M | re.I)
    model = re.search(r"^model\s*:\s*(\d+)\s*$", text, re.M | re.I)
    if family and model and not re.search(r"\d", re.sub(r"@.*", "", name)):
        name += f" (family {family.group(1)}, model {model.group(1)})"
    return name
