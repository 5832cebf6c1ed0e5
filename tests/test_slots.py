"""Slot packing on fake GPUs: k runs per GPU, g whole GPUs per DDP run, reservations, clear errors."""

from __future__ import annotations

import pytest
from kdbench.errors import KdbenchError
from kdbench.execute.local.executor import detect_slots
from kdbench.execute.local.slots import Slot, SlotPool


def gpus(n: int, k: int) -> list[Slot]:
    """The slots detect_slots makes for n GPUs × k runs each."""
    return [
        Slot(f"gpu{g}" + (f".{j}" if k > 1 else ""), {"CUDA_VISIBLE_DEVICES": str(g)})
        for g in range(n)
        for j in range(k)
    ]


def names(placed) -> dict[str, str]:
    return {key: slot.name for key, slot in placed}


def test_single_runs_spread_over_gpus_then_double_up():
    pool = SlotPool(gpus(3, 2))
    placed = pool.assign([(f"r{i}", 1) for i in range(7)])
    assert names(placed) == {
        "r0": "gpu0.0",
        "r1": "gpu1.0",
        "r2": "gpu2.0",
        "r3": "gpu0.1",
        "r4": "gpu1.1",
        "r5": "gpu2.1",
    }
    assert [pool.busy(u) for u in "012"] == [2, 2, 2]
    pool.release(placed[1][1])  # r1 ends: gpu1 has room again
    assert names(pool.assign([("r6", 1)])) == {"r6": "gpu1.0"}


def test_a_two_gpu_run_takes_two_whole_gpus_with_their_visible_devices():
    pool = SlotPool(gpus(3, 2))
    [(_, slot)] = pool.assign([("ddp", 2)])
    assert (slot.name, slot.env["CUDA_VISIBLE_DEVICES"], slot.units, slot.nproc) == (
        "gpu0+gpu1",
        "0,1",
        ("0", "1"),
        2,
    )
    assert [pool.busy(u) for u in "012"] == [2, 2, 0]  # no single run may share gpu0 or gpu1
    assert names(pool.assign([("a", 1), ("b", 1), ("c", 1)])) == {"a": "gpu2.0", "b": "gpu2.1"}
    pool.release(slot)
    assert [pool.busy(u) for u in "012"] == [0, 0, 2]


def test_a_two_gpu_run_waits_for_two_free_gpus_while_single_runs_fill_the_others():
    pool = SlotPool(gpus(3, 2))
    first = dict(pool.assign([("t0", 1), ("t1", 1), ("t2", 1), ("t3", 1)]))
    assert {k: s.name for k, s in first.items()} == {
        "t0": "gpu0.0",
        "t1": "gpu1.0",
        "t2": "gpu2.0",
        "t3": "gpu0.1",
    }
    pool.release(first["t1"])  # busy: gpu0 2, gpu1 0, gpu2 1
    # The DDP run cannot start (only gpu1 is whole). It reserves the two GPUs closest to free (gpu1, gpu2):
    # later single runs may only use gpu0, which is full, so they wait.
    assert pool.assign([("ddp", 2), ("s0", 1), ("s1", 1)]) == []
    pool.release(
        first["t0"]
    )  # busy: gpu0 1, gpu1 0, gpu2 1; the tie goes to unit order: gpu1 + gpu0 are reserved
    assert names(pool.assign([("ddp", 2), ("s0", 1), ("s1", 1)])) == {
        "s0": "gpu2.1"
    }  # single runs fill gpu2
    pool.release(
        first["t3"]
    )  # gpu0 and gpu1 are whole now: the DDP run starts there, before any single run
    assert names(pool.assign([("ddp", 2), ("s1", 1)])) == {"ddp": "gpu0+gpu1"}
    assert [pool.busy(u) for u in "012"] == [2, 2, 2]


def test_order_decides_who_goes_first():
    pool = SlotPool(gpus(2, 1))
    # The DDP run comes before the student: it keeps gpu1 for itself until the teacher's gpu0 is free too.
    assert names(pool.assign([("teacher", 1), ("ddp", 2), ("student", 1)])) == {"teacher": "gpu0"}
    pool = SlotPool(gpus(2, 1))
    assert names(pool.assign([("ddp", 2), ("student", 1)])) == {"ddp": "gpu0+gpu1"}


def test_a_smaller_ddp_run_does_not_jump_the_queue_onto_reserved_gpus():
    pool = SlotPool(gpus(4, 1))
    busy = dict(pool.assign([("a", 1), ("b", 1)]))  # gpu0, gpu1
    # ddp3 cannot start (2 whole GPUs) and reserves gpu2, gpu3 and gpu0; ddp2 would fit on gpu2+gpu3 but waits.
    assert pool.assign([("ddp3", 3), ("ddp2", 2)]) == []
    pool.release(busy["a"])
    assert names(pool.assign([("ddp3", 3), ("ddp2", 2)])) == {"ddp3": "gpu0+gpu2+gpu3"}


def test_cpu_ranks_take_cpu_slots():
    pool = SlotPool(
        [Slot("cpu0", {"OMP_NUM_THREADS": "4"}), Slot("cpu1", {"OMP_NUM_THREADS": "4"})]
    )
    [(_, slot)] = pool.assign([("ddp", 2)])
    assert (slot.name, slot.units, slot.env) == (
        "cpu0+cpu1",
        ("cpu0", "cpu1"),
        {"OMP_NUM_THREADS": "4"},
    )
    assert pool.assign([("single", 1)]) == []


def test_more_gpus_than_exist_is_an_error_before_anything_starts():
    with pytest.raises(KdbenchError, match=r"needs 3 GPUs at once but only 2 GPU\(s\) \(0, 1\)"):
        SlotPool(gpus(2, 4)).check(3)
    with pytest.raises(KdbenchError, match="--cpu-jobs 2"):
        SlotPool(detect_slots("cpu", cpu_jobs=1)).check(2)
    SlotPool(detect_slots("cpu", cpu_jobs=2)).check(2)


def test_runs_that_cannot_be_split_take_one_process():
    from kdbench.execute.base import process_count
    from kdbench.plan import plan
    from kdbench.recipe import load_recipe

    p = plan(load_recipe("simkd-table3"), "smoke")
    by_method = {s.method: process_count(s, 2) for s in p.specs.values()}
    assert (
        by_method["crd"] == by_method["semckd"] == 1
    )  # a memory bank / modules sized by the batch
    assert by_method["kd"] == by_method["simkd"] == by_method["ce"] == 2
