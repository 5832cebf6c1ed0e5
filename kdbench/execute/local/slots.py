"""Slots and who gets them: k single-process runs per GPU, or g whole GPUs for a g-process (DDP) run.

A *unit* is what a multi-process run takes whole: a GPU (its ``CUDA_VISIBLE_DEVICES`` label), or on a
machine without GPUs one CPU slot (each rank of a CPU run is one CPU slot, ``--cpu-jobs``). A unit has
``runs_per_gpu`` slots. Placement, in the order runs are offered (teachers first):

* a single-process run takes a free slot on the least-loaded unit (ties: unit order), so runs spread
  over the GPUs before they double up;
* a g-process run takes g units that have no run at all, and holds all their slots while it runs;
* when a g-process run cannot be placed, the g units closest to free (fewest busy slots) are reserved
  for it for the rest of the pass: no later run starts on them. The reserved set's busy count can only
  fall, so the run is never starved by single-GPU runs, which meanwhile fill the other units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from kdbench.errors import KdbenchError

K = TypeVar("K")


@dataclass(frozen=True)
class Slot:
    """A place a run can execute: a name and the environment it gets (e.g. CUDA_VISIBLE_DEVICES).

    ``units`` is set on a slot made for a multi-process run: the units it holds whole (one process each)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    units: tuple[str, ...] = ()

    @property
    def unit(self) -> str:
        """The unit of a single-process slot: its GPU label, or on CPU the slot itself."""
        return self.env.get("CUDA_VISIBLE_DEVICES", self.name)

    @property
    def nproc(self) -> int:
        return max(1, len(self.units))


class SlotPool:
    """The free slots of a fixed set, handed out per scheduling pass (rules in the module docstring)."""

    def __init__(self, slots: Sequence[Slot]):
        if not slots:
            raise ValueError("at least one slot is needed")
        self.slots = list(slots)
        self.units = list(dict.fromkeys(s.unit for s in self.slots))
        self.free = list(self.slots)
        self.held: dict[str, list[Slot]] = {}  # group slot name -> the slots it holds

    def check(self, nproc: int) -> None:
        """Raise before anything starts if a ``nproc``-process run could never be placed."""
        if nproc > len(self.units):
            gpu = any("CUDA_VISIBLE_DEVICES" in s.env for s in self.slots)
            have = (
                f"{len(self.units)} GPU(s) ({', '.join(self.units)})"
                if gpu
                else f"{len(self.units)} CPU slot(s)"
            )
            fix = (
                "use fewer --gpus-per-run or make more GPUs visible (CUDA_VISIBLE_DEVICES)"
                if gpu
                else f"pass --cpu-jobs {nproc} (each rank of a CPU run is one CPU slot) or fewer --gpus-per-run"
            )
            raise KdbenchError(
                f"a run needs {nproc} {'GPUs' if gpu else 'CPU slots'} at once but only {have} "
                f"are available: {fix}."
            )

    def busy(self, unit: str) -> int:
        """Slots of ``unit`` in use."""
        return sum(s.unit == unit for s in self.slots) - sum(s.unit == unit for s in self.free)

    def assign(self, wants: Sequence[tuple[K, int]]) -> list[tuple[K, Slot]]:
        """One pass: place the runs ``wants`` (key, processes) in their order; returns the placed ones with their slots."""
        reserved: set[str] = set()
        placed = []
        for key, nproc in wants:
            slot = self._take(nproc, reserved)
            if slot is not None:
                placed.append((key, slot))
            elif nproc > 1 and not reserved:
                reserved = set(
                    sorted(self.units, key=self.busy)[:nproc]
                )  # stable: ties keep unit order
        return placed

    def release(self, slot: Slot) -> None:
        self.free.extend(self.held.pop(slot.name) if slot.units else [slot])

    def _take(self, nproc: int, reserved: set[str]) -> Slot | None:
        open_units = [u for u in sorted(self.units, key=self.busy) if u not in reserved]
        if nproc == 1:
            for unit in open_units:
                slot = next((s for s in self.free if s.unit == unit), None)
                if slot is not None:
                    self.free.remove(slot)
                    return slot
            return None
        whole = [u for u in open_units if self.busy(u) == 0][:nproc]
        if len(whole) < nproc:
            return None
        members = [s for s in self.free if s.unit in whole]
        self.free = [s for s in self.free if s.unit not in whole]
        group = _group(whole, members)
        self.held[group.name] = members
        return group


def _group(units: list[str], members: list[Slot]) -> Slot:
    """The slot of a multi-process run on ``units``: one process per unit (GPU, or CPU slot)."""
    first = next(s for s in members if s.unit == units[0])
    names = [next(s for s in members if s.unit == u).name.split(".")[0] for u in units]
    env = dict(first.env)
    if "CUDA_VISIBLE_DEVICES" in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(units)
    return Slot("+".join(names), env, tuple(units))


def concurrency(slots: Sequence[Slot], gpus_per_run: int) -> int:
    """How many runs of ``gpus_per_run`` processes the slots can train at once."""
    if gpus_per_run == 1:
        return len(slots)
    return max(1, len({s.unit for s in slots}) // gpus_per_run)
