"""``gpu``: NVIDIA GPUs visible to this slot (``nvidia-smi -L``, else /proc/driver/nvidia).

CUDA_VISIBLE_DEVICES, when the batch system sets it, narrows the list to the GPUs the
slot was given. Tag ``GPU`` when there is at least one. Options (``[checks.gpu]``):
``nvidia_smi`` (command, default nvidia-smi), ``proc_dir`` (default
/proc/driver/nvidia/gpus).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checks._util import budget, describe_failure, option_path, option_str, read_text
from pilot.api import CheckContext, CheckOutcome, Status, run_command

NAME = "gpu"
_SMI_LINE = re.compile(r"^GPU (?P<index>\d+): (?P<model>.+?)(?: \(UUID: (?P<uuid>[^)]+)\))?$")


@dataclass(frozen=True)
class Gpu:
    index: int
    model: str
    uuid: str | None = None


def parse_nvidia_smi(text: str) -> list[Gpu]:
    gpus: list[Gpu] = []
    for line in text.splitlines():
        match = _SMI_LINE.match(line.strip())
        if match:
            gpus.append(Gpu(int(match["index"]), match["model"].strip(), match["uuid"]))
    return gpus


def read_proc(directory: Path) -> list[Gpu]:
    """GPUs from /proc/driver/nvidia/gpus/<bus id>/information ("Model: ..." lines)."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    gpus: list[Gpu] = []
    for entry in entries:
        for line in (read_text(entry / "information") or "").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model":
                gpus.append(Gpu(len(gpus), value.strip()))
                break
    return gpus


def visible(gpus: list[Gpu], cuda_visible: str | None) -> list[Gpu]:
    """The GPUs CUDA_VISIBLE_DEVICES (indexes or UUIDs) lets us use; all when unset."""
    if cuda_visible is None:
        return gpus
    wanted = {item.strip() for item in cuda_visible.split(",") if item.strip()}
    return [gpu for gpu in gpus if str(gpu.index) in wanted or (gpu.uuid or "") in wanted]


class GpuCheck:
    name: str = NAME
    required: bool = False
    timeout: float | None = 15.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        gpus, source, problem = self._find(ctx)
        gpus = visible(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        facts: dict[str, Any] = {
            "count": len(gpus),
            "models": [gpu.model for gpu in gpus],
            "source": source,
        }
        tags = ("GPU",) if gpus else ()
        if problem:
            return CheckOutcome(Status.WARNING, problem, facts, tags)
        message = (f"{len(gpus)} GPU(s): " + ", ".join(facts["models"])) if gpus else "no GPU"
        return CheckOutcome(Status.PASSED, message, facts, tags)

    def _find(self, ctx: CheckContext) -> tuple[list[Gpu], str | None, str | None]:
        """(GPUs, where they were found, a problem with nvidia-smi or None)."""
        problem = None
        smi = shutil.which(option_str(ctx, NAME, "nvidia_smi", "nvidia-smi"))
        if smi is not None:
            result = run_command([smi, "-L"], timeout=budget(ctx, 10.0))
            if result.ok:
                return parse_nvidia_smi(result.stdout), "nvidia-smi", None
            problem = f"nvidia-smi -L failed: {describe_failure(result)}"
        gpus = read_proc(option_path(ctx, NAME, "proc_dir", "/proc/driver/nvidia/gpus"))
        return gpus, ("proc" if gpus else None), problem
