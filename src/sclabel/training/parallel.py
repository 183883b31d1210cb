"""Deep-ensemble members trained in parallel, one process per device.

Fabric launches one process per device (as for DDP), but no gradients are shared: each
process trains whole members (member m on rank m % world_size) on its own device with the
ordinary single-device loop, so a member's weights are exactly those of sequential training
with the same seed. Members are exchanged through safetensors files in a folder every rank
sees; then every rank holds the full ensemble and only rank 0 writes outputs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save_file

from sclabel.config import Hardware
from sclabel.models.base import Classifier
from sclabel.training.loop import FitResult


def fit_members_parallel(
    ensemble: int,
    hardware: Hardware,
    train_member: Callable[[int, Hardware], tuple[Classifier, FitResult]],
    build_member: Callable[[int], Classifier],
    shared: Path | None = None,
) -> tuple[list[Classifier], list[FitResult]]:
    """`train_member(m, hardware)` trains member m on `hardware`; `build_member(m)` makes an
    untrained one.

    `shared`: a folder every rank can read (needed across machines); default: a temporary
    folder, which only processes on one machine share."""
    from lightning.fabric import Fabric

    launcher = Fabric(
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        strategy="ddp",
        num_nodes=hardware.num_nodes,
    )
    launcher.launch()
    rank, world = launcher.global_rank, launcher.world_size
    # one device per process: this rank's own GPU, or one CPU process
    device = [launcher.local_rank] if launcher.device.type == "cuda" else 1
    local = dataclasses.replace(hardware, devices=device, strategy="auto", num_nodes=1)
    if shared is None:
        made = tempfile.mkdtemp(prefix="sclabel-members-") if rank == 0 else None
        folder = Path(launcher.broadcast(made))
    else:
        folder = shared / "members"
        folder.mkdir(parents=True, exist_ok=True)
    for member in range(rank, ensemble, world):
        module, result = train_member(member, local)
        save_file(
            {k: v.contiguous() for k, v in module.state_dict().items()},
            str(folder / f"member-{member}.safetensors"),
        )
        record = dataclasses.asdict(result)
        (folder / f"member-{member}.json").write_text(json.dumps(record))
    launcher.barrier()
    members, results = [], []
    for member in range(ensemble):
        module = build_member(member)
        module.load_state_dict(load_file(str(folder / f"member-{member}.safetensors")))
        members.append(module)
        record = json.loads((folder / f"member-{member}.json").read_text())
        results.append(FitResult(**{**record, "is_main_process": rank == 0}))
    launcher.barrier()  # every rank has read the files before rank 0 deletes them
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return members, results
