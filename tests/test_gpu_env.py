"""The environment the local executor gives its children, on a fake GPU machine (no GPU needed): GPU labels
mapped through the executor's own CUDA_VISIBLE_DEVICES, free memory read through a fake NVML without a CUDA
context, no inherited SLURM/torchrun rank variables, per-slot thread counts, pinned loader memory on CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from kdbench.execute.local import executor as local
from kdbench.execute.local import gpus, packing
from kdbench.execute.local.executor import ProcessPerRun, Slot, child_environment, detect_slots
from kdbench.train import distributed

GIB = 1 << 30


class FakeNvml(types.ModuleType):
    """pynvml over a fixed set of physical devices (UUID → free bytes); devices can only be opened by UUID."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: dict[str, int]):
        super().__init__("pynvml")
        self.devices, self.opened = devices, []

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid not in self.devices:
            raise self.NVMLError(f"no device {uuid}")
        self.opened.append(uuid)
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(free=self.devices[handle], total=141 * GIB)


def no_context(*args, **kwargs):
    raise AssertionError("torch.cuda.mem_get_info would create a CUDA context in the executor")


def fake_gpus(
    monkeypatch,
    physical: dict[str, int],
    visible: str | None = None,
    cuda_uuids: list[str] | None = None,
) -> FakeNvml:
    """A machine whose GPUs have NVML UUIDs ``physical`` (→ free bytes), in that order; the executor runs with
    CUDA_VISIBLE_DEVICES=``visible`` and CUDA reports ``cuda_uuids`` (bare hex) for its devices 0, 1, …"""
    uuids = list(physical)
    if cuda_uuids is None:
        chosen = [int(v) for v in visible.split(",")] if visible is not None else range(len(uuids))
        cuda_uuids = [uuids[k].split("-", 1)[1] for k in chosen]
    nvml = FakeNvml(physical)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: len(cuda_uuids))
    monkeypatch.setattr(
        "torch.cuda.get_device_properties", lambda i: types.SimpleNamespace(uuid=cuda_uuids[i])
    )
    monkeypatch.setattr("torch.cuda.mem_get_info", no_context)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return nvml


def kd_spec():
    from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec

    return RunSpec(
        profile="full",
        model="resnet8x4",
        method="kd",
        method_params={},
        seed=0,
        teacher=TeacherRef(model="resnet32x4", run_id="t"),
        data=DataSpec(name="cifar100"),
        train=TrainSpec(
            epochs=240,
            batch_size=64,
            lr=0.05,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
    )


EIGHT = {f"GPU-{k}{k}{k}{k}-aaaa": 80 * GIB for k in range(8)}


def test_children_get_the_physical_gpus_of_the_executors_visible_set(monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=4,5,6,7 the executor's cuda:0..3 are physical GPUs 4..7: each child's
    CUDA_VISIBLE_DEVICES must name those, not 0..3 (which a child reads as physical GPUs 0..3)."""
    fake_gpus(monkeypatch, EIGHT, visible="4,5,6,7")
    slots = detect_slots("auto", 2)
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in slots] == [
        (f"gpu{g}.{k}", str(g)) for g in (4, 5, 6, 7) for k in range(2)
    ]
    (one,) = detect_slots("cuda:1", 1)  # --device cuda:N counts the executor's visible GPUs too
    assert (one.name, one.env["CUDA_VISIBLE_DEVICES"]) == ("gpu5", "5")
    with pytest.raises(Exception, match="sees 4 GPU"):
        detect_slots("cuda:4", 1)


def test_uuid_and_mig_labels_are_passed_on_as_they_are(monkeypatch):
    fake_gpus(
        monkeypatch,
        {"GPU-bbbb-1": 80 * GIB, "MIG-cccc-2": 20 * GIB},
        visible="MIG-cccc-2,GPU-bbbb-1",
        cuda_uuids=["cccc-2", "bbbb-1"],
    )
    slots = detect_slots("auto", 1)
    assert [(s.name, s.env["CUDA_VISIBLE_DEVICES"]) for s in slots] == [
        ("gpu0", "MIG-cccc-2"),
        ("gpu1", "GPU-bbbb-1"),
    ]
    # a two-GPU run gets both labels, in the executor's order
    from kdbench.execute.local.slots import SlotPool

    [(_, group)] = SlotPool(slots).assign([("ddp", 2)])
    assert group.env["CUDA_VISIBLE_DEVICES"] == "MIG-cccc-2,GPU-bbbb-1"


def test_packing_reads_the_free_memory_of_the_gpus_the_children_use(monkeypatch):
    """Physical GPU 4 is nearly full, 0..3 are empty: with CUDA_VISIBLE_DEVICES=4,5 the executor's cuda:0 is
    GPU 4 and gets one run, measured through NVML by UUID; torch.cuda.mem_get_info (a context on every GPU)
    is never called."""
    per_run = packing.run_bytes(packing.footprint(kd_spec()))
    physical = dict(EIGHT)
    physical["GPU-4444-aaaa"] = per_run
    nvml = fake_gpus(monkeypatch, physical, visible="4,5")
    slots = detect_slots("auto", "auto", specs=[kd_spec()])
    assert [s.name for s in slots] == ["gpu4"] + [
        f"gpu5.{k}" for k in range(packing.MAX_RUNS_PER_GPU)
    ]
    assert nvml.opened == ["GPU-4444-aaaa", "GPU-5555-aaaa"]


def test_cuda_order_is_not_assumed_to_be_nvmls(monkeypatch):
    """CUDA's default order (FASTEST_FIRST) may differ from NVML's PCI order: the join is by UUID."""
    physical = {"GPU-0000-aaaa": 80 * GIB, "GPU-1111-aaaa": 1 * GIB}
    fake_gpus(
        monkeypatch, physical, cuda_uuids=["1111-aaaa", "0000-aaaa"]
    )  # CUDA's device 0 is NVML's 1
    free = gpus.free_memory(gpus.visible_gpus(2))
    assert free == {"0": 1 * GIB, "1": 80 * GIB}


def test_the_auto_packing_fits_each_gpus_free_memory(monkeypatch):
    spec = kd_spec()
    per_run = packing.run_bytes(packing.footprint(spec))
    assert (
        2 * GIB < per_run < 4 * GIB
    )  # resnet32x4 → resnet8x4 at batch 64, its dataset and its epoch of cached logits
    fake_gpus(monkeypatch, {"GPU-0000-a": 3 * per_run, "GPU-1111-a": 80 * GIB})
    slots = local.detect_slots("auto", "auto", specs=[spec])
    assert [s.name for s in slots].count("gpu0.0") == 1 and sum(
        s.name.startswith("gpu0") for s in slots
    ) == 2
    assert sum(s.name.startswith("gpu1") for s in slots) == packing.MAX_RUNS_PER_GPU


def test_without_nvml_a_probe_process_measures_free_memory(monkeypatch):
    probe_free_memory = gpus.probe_free_memory
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setattr(gpus, "probe_free_memory", lambda chosen: {g.label: 5 for g in chosen})
    assert gpus.free_memory([gpus.Gpu(0, "3")]) == {"3": 5}
    # the probe itself: one subprocess, free bytes in the executor's (torch's) order
    probe = [sys.executable, "-c", "print('[7, 9]')"]
    assert probe_free_memory([gpus.Gpu(1, "GPU-x")], probe) == {"GPU-x": 9}
    with pytest.raises(Exception, match="--runs-per-gpu N"):
        probe_free_memory([gpus.Gpu(0, "0")], [sys.executable, "-c", "raise SystemExit('no CUDA')"])


def test_no_visible_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(Exception, match="no GPU is visible"):
        detect_slots("cuda", 1)


# --------------------------------------------------------------------------- rank variables

SRUN_TORCHRUN = {
    "SLURM_PROCID": "0",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "0",
    "SLURM_NNODES": "1",
    "RANK": "0",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "4",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "x",
}


def test_a_slot_does_not_inherit_the_enclosing_jobs_ranks(monkeypatch, tmp_path: Path):
    """Inside an srun step or a torchrun job every child used to see itself as rank 0 of 4 and wait 30 min for
    the other three; the child's environment keeps everything else (PATH, the data dir) and the slot's own."""
    for key, value in SRUN_TORCHRUN.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KDBENCH_DATA", "/data")
    slot = Slot("gpu5", {"CUDA_VISIBLE_DEVICES": "5"})
    env = child_environment(slot)
    assert distributed.env_ranks(env) is None
    assert not set(SRUN_TORCHRUN) & set(env)
    assert env["KDBENCH_DATA"] == "/data" and env["CUDA_VISIBLE_DEVICES"] == "5"
    # both launchers start their processes with it: a process per run …
    out = tmp_path / "env.json"
    dump = [
        sys.executable,
        "-c",
        f"import json, os; open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))",
    ]
    (tmp_path / "run").mkdir()
    ProcessPerRun(lambda spec_file, results, s: dump).start(
        tmp_path / "run" / "spec.json", tmp_path, slot
    ).wait(60)
    seen = json.loads(out.read_text())
    assert distributed.env_ranks(seen) is None and not set(SRUN_TORCHRUN) & set(seen)
    # … and the long-lived worker of a slot
    started = {}

    class Popen:
        def __init__(self, *args, env, **kwargs):
            started["env"] = env
            self.stdout = iter(())

    monkeypatch.setattr(subprocess, "Popen", Popen)
    local._Worker(slot, tmp_path / "w.log")
    assert (
        distributed.env_ranks(started["env"]) is None
        and started["env"]["CUDA_VISIBLE_DEVICES"] == "5"
    )


# --------------------------------------------------------------------------- threads


def test_packed_slots_share_the_cores(monkeypatch):
    for key in local.THREAD_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(local, "usable_cores", lambda: 16)
    fake_gpus(monkeypatch, EIGHT, visible="0,1")
    slots = detect_slots(
        "auto", 4
    )  # 8 runs on 16 cores: 2 threads each, for OpenMP, MKL and Inductor's compile workers
    assert all(
        {k: s.env[k] for k in local.THREAD_VARIABLES} == dict.fromkeys(local.THREAD_VARIABLES, "2")
        for s in slots
    )
    monkeypatch.setattr(local, "usable_cores", lambda: 4)
    assert detect_slots("auto", 8)[0].env["OMP_NUM_THREADS"] == "1"  # never below one
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    slot = detect_slots("auto", 1)[0]
    assert "OMP_NUM_THREADS" not in slot.env and child_environment(slot)["OMP_NUM_THREADS"] == "3"
    assert slot.env["MKL_NUM_THREADS"] == "2"


def test_cpu_slots_share_the_cores_and_keep_the_users_setting(monkeypatch):
    for key in local.THREAD_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(local, "usable_cores", lambda: 8)
    assert all(
        s.env["OMP_NUM_THREADS"] == "4" and s.env["TORCHINDUCTOR_COMPILE_THREADS"] == "4"
        for s in detect_slots("cpu", cpu_jobs=2)
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert all("OMP_NUM_THREADS" not in s.env for s in detect_slots("cpu", cpu_jobs=2))


# --------------------------------------------------------------------------- pinned memory


def test_torch_loaders_pin_their_batches_for_a_cuda_run():
    from kdbench.data.datasets.synthetic import make_synthetic
    from kdbench.data.loaders.factory import make_loaders

    arrays = make_synthetic(num_classes=4, train_size=16, test_size=8)
    cuda, cpu = (
        make_loaders("torch", arrays, device="cuda"),
        make_loaders("torch", arrays, device="cpu"),
    )
    assert cuda.train(8, seed=0, epoch=1).pin_memory and cuda.test(8).pin_memory
    assert not cpu.train(8, seed=0, epoch=1).pin_memory and not cpu.test(8).pin_memory


# --------------------------------------------------------------------------- teacher cache


def test_the_cache_table_stays_in_shared_host_memory(tmp_path: Path, monkeypatch):
    """The table is not copied to a GPU (3.2 GB per packed process for CIFAR-100, after a free-memory query in
    each): it stays a memory-mapped host tensor, and each epoch moves only its (N, C) logits."""
    import dataclasses

    import numpy as np
    import torch
    from kdbench import data, models
    from kdbench.train import teacher_cache

    arrays = data.load_dataset("synthetic", num_classes=10, train_size=64, test_size=16)
    arrays = dataclasses.replace(arrays, x_train=arrays.x_train[:6], y_train=arrays.y_train[:6])
    torch.manual_seed(0)
    path = tmp_path / "cache.npy"
    teacher_cache.build(
        models.create("resnet8", num_classes=10),
        arrays,
        path,
        padding=4,
        device=torch.device("cpu"),
    )
    monkeypatch.setattr("torch.cuda.mem_get_info", no_context)
    on_gpu = teacher_cache.TeacherCache(path, 6, 4, 10, torch.device("cuda"))
    assert on_gpu.table.device.type == "cpu"
    cache = teacher_cache.TeacherCache(path, 6, 4, 10, torch.device("cpu"))
    plan = data.epoch_plan(6, 0, 3)
    logits = cache.epoch_logits(plan)
    assert logits.shape == (6, 10)
    table = np.load(path, mmap_mode="r")
    for i in range(6):
        dx, dy = (int(v) for v in plan.offsets[i])
        assert torch.equal(
            logits[i], torch.from_numpy(np.array(table[i, dy, dx, int(plan.flips[i])]))
        )
    assert torch.equal(cache.for_epoch(plan)(torch.tensor([4, 1])), logits[[4, 1]])


def test_ffcv_buffers_are_copied_without_a_stream_sync_only_when_pageable():
    """ffcv recycles its batch buffers: from pageable memory a non_blocking copy is safe (CUDA stages the source
    before returning) and skips the blocking copy's stream synchronisation; a pinned buffer is copied blocking."""
    import torch
    from kdbench.data.loaders.ffcv_files import non_blocking_from

    pageable = torch.zeros(4, dtype=torch.uint8)
    pinned = types.SimpleNamespace(is_pinned=lambda: True)
    assert non_blocking_from(pageable, torch.device("cuda")) and not non_blocking_from(
        pinned, torch.device("cuda")
    )
    assert not non_blocking_from(pageable, torch.device("cpu"))


def test_ffcv_decodes_with_the_processs_thread_share(monkeypatch, tmp_path: Path):
    """Each of 8 packed runs (or DDP ranks) used to start os.cpu_count() ffcv threads; now its own share."""
    import torch
    from kdbench.data.datasets.synthetic import make_synthetic
    from kdbench.data.loaders import ffcv_arrays, ffcv_files

    monkeypatch.setattr(ffcv_files, "import_ffcv", lambda: types.SimpleNamespace())
    monkeypatch.setattr(ffcv_arrays, "check_meta", lambda *args: None)
    arrays = make_synthetic(num_classes=4, train_size=8, test_size=4)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ffcv_arrays.FfcvLoaders(arrays, torch.device("cpu"), tmp_path).ffcv_workers == 1
        assert (
            ffcv_arrays.FfcvLoaders(
                arrays, torch.device("cpu"), tmp_path, num_workers=5
            ).ffcv_workers
            == 5
        )
    finally:
        torch.set_num_threads(threads)


NO_CONTEXT_SCRIPT = """
import ctypes, json
from kdbench.execute.local.executor import detect_slots
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
spec = RunSpec(profile="full", model="resnet8x4", method="kd", method_params={}, seed=0,
               teacher=TeacherRef(model="resnet32x4", run_id="t"), data=DataSpec(name="cifar100"),
               train=TrainSpec(epochs=240, batch_size=64, lr=0.05, milestones=(), lr_decay=0.1, momentum=0.9,
                               nesterov=False, weight_decay=5e-4))
slots = detect_slots("auto", "auto", specs=[spec])
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
count = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
active = []
for i in range(count.value):
    device, flags, state = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    assert cuda.cuDeviceGet(ctypes.byref(device), i) == 0
    assert cuda.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(state)) == 0
    active.append(bool(state.value))
print(json.dumps({"slots": [s.name for s in slots], "active": active}))
"""


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_the_executor_opens_no_cuda_context_on_a_real_gpu(tmp_path: Path):
    """On a GPU: sizing the slots (device count, UUIDs, NVML free memory) leaves no primary CUDA context
    active in the executor's process (the CUDA driver's own cuDevicePrimaryCtxGetState says)."""
    done = subprocess.run(
        [sys.executable, "-c", NO_CONTEXT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["slots"] and not any(report["active"]), report


def test_nproc_ranks_share_the_cores_of_the_affinity_mask(monkeypatch):
    """A SLURM allocation of 8 cores on a 128-core node: 4 ranks get 2 threads each, not 32."""
    import os

    from kdbench.train import launch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    with launch._environment(4):
        assert os.environ["OMP_NUM_THREADS"] == "2"
    assert "OMP_NUM_THREADS" not in os.environ
