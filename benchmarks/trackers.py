"""Trackers: what is measured around a scenario besides latency: peak memory and GPU energy.

Host memory peak uses the kernel's own high-water mark (VmHWM, reset through clear_refs), so no
sampling thread competes with the model for the GIL. GPU energy comes from NVML's cumulative
energy counter, read before and after.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass, field
from pathlib import Path

from .backends.devices import cuda_index
from .layout import Metrics


@dataclass
class Measurements:
    peak_host_mem_mb: float | None = None
    peak_gpu_mem_mb: float | None = None
    energy_j: float | None = None
    extra: dict = field(default_factory=dict)

    def metrics(self, samples_completed: int):
        out = {}
        if self.peak_host_mem_mb is not None:
            out[Metrics.PEAK_HOST_MEM] = self.peak_host_mem_mb
        if self.peak_gpu_mem_mb is not None:
            out[Metrics.PEAK_GPU_MEM] = self.peak_gpu_mem_mb
        if self.energy_j is not None and samples_completed > 0 and self.energy_j > 0:
            out[Metrics.ENERGY_PER_INFERENCE] = self.energy_j / samples_completed
            out[Metrics.INFERENCES_PER_J] = samples_completed / self.energy_j
        return out


class HostMemoryTracker:
    status = Path("/proc/self/status")
    clear_refs = Path("/proc/self/clear_refs")

    def start(self):
        try:
            self.clear_refs.write_text("5")  # "5" resets the peak RSS (VmHWM) to the current RSS
            self._kernel_peak = True
        except OSError:
            self._kernel_peak = False

    def peak_mb(self):
        if self._kernel_peak:
            for line in self.status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole-process peak, KiB


class GpuEnergyTracker:
    """NVML total energy (mJ) of the device the backend runs on; absent without an NVIDIA GPU."""

    def __init__(self, device: str):
        self.handle = None
        if not device.startswith("cuda"):
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index(device))
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:  # noqa: BLE001 - no driver, or a GPU without an energy counter (pre-Volta)
            self.handle = None

    def read_j(self):
        if self.handle is None:
            return None
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0


def _physical_index(device):
    """NVML numbers all GPUs; CUDA numbers the visible ones. Map through CUDA_VISIBLE_DEVICES."""
    import os

    index = cuda_index(device)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if ids and index < len(ids) and ids[index].isdigit():
        return int(ids[index])
    return index


@contextlib.contextmanager
def track(backend):
    """Measure peak host/GPU memory and GPU energy around the body; fill a Measurements."""
    measurements = Measurements()
    host = HostMemoryTracker()
    energy = GpuEnergyTracker(backend.device)
    backend.reset_peak_gpu_memory()
    host.start()
    start_j = energy.read_j()
    try:
        yield measurements
    finally:
        end_j = energy.read_j()
        measurements.peak_host_mem_mb = host.peak_mb()
        measurements.peak_gpu_mem_mb = backend.peak_gpu_memory_mb()
        if measurements.peak_gpu_mem_mb is None and energy.handle is not None:
            info = energy.nvml.nvmlDeviceGetMemoryInfo(energy.handle)
            measurements.peak_gpu_mem_mb = info.used / 2**20  # ORT: device-wide use at the end
        if start_j is not None and end_j is not None:
            measurements.energy_j = end_j - start_j
