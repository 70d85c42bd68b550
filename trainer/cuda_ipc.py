"""GPU memory shared between two processes by file descriptor (a fixed file, beside evaluate.py).

The scorer and a model server run in different containers on the same GPU. The logits used to
travel GPU -> host memory -> GPU (~100 GB per evaluation, bound by the host's copy engines); with
this module the scorer allocates the logits slots in GPU memory and the model server writes them
there directly, a device-to-device copy.

How: the CUDA driver's virtual memory management. The owner creates an allocation that can be
exported as a POSIX file descriptor (`cuMemCreate` with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
`cuMemExportToShareableHandle`), sends the descriptor over the Unix socket (SCM_RIGHTS), and the
other process imports it (`cuMemImportFromShareableHandle`) and maps it into its own address space.
The descriptor is the only capability: no shared IPC or PID namespace, no host memory, nothing else
of either process is reachable through it. Each side sees the allocation as a flat uint8 tensor.

Only the driver API is used (ctypes over libcuda.so.1, which torch has already loaded); any failure
raises CudaShareError, and the callers fall back to host memory slots.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Any

import torch

CU_MEM_ALLOCATION_TYPE_PINNED = 1
CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1
CU_MEM_LOCATION_TYPE_DEVICE = 1
CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3
CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 1


class CudaShareError(RuntimeError):
    """The driver refused a step of sharing GPU memory (the message names the step and the error)."""


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [
        ("compressionType", ctypes.c_ubyte),
        ("gpuDirectRDMACapable", ctypes.c_ubyte),
        ("usage", ctypes.c_ushort),
        ("reserved", ctypes.c_ubyte * 4),
    ]


class _AllocationProp(ctypes.Structure):  # CUmemAllocationProp
    _fields_ = [
        ("type", ctypes.c_int),
        ("requestedHandleTypes", ctypes.c_int),
        ("location", _Location),
        ("win32HandleMetaData", ctypes.c_void_p),
        ("allocFlags", _AllocFlags),
    ]


class _AccessDesc(ctypes.Structure):  # CUmemAccessDesc
    _fields_ = [("location", _Location), ("flags", ctypes.c_int)]


_u64, _size, _p = ctypes.c_ulonglong, ctypes.c_size_t, ctypes.POINTER
_SIGNATURES: dict[str, list[Any]] = {
    "cuGetErrorName": [ctypes.c_int, _p(ctypes.c_char_p)],
    "cuMemGetAllocationGranularity": [_p(_size), _p(_AllocationProp), ctypes.c_int],
    "cuMemCreate": [_p(_u64), _size, _p(_AllocationProp), _u64],
    "cuMemExportToShareableHandle": [ctypes.c_void_p, _u64, ctypes.c_int, _u64],
    "cuMemImportFromShareableHandle": [_p(_u64), ctypes.c_void_p, ctypes.c_int],
    "cuMemAddressReserve": [_p(_u64), _size, _size, _u64, _u64],
    "cuMemMap": [_u64, _size, _size, _u64, _u64],
    "cuMemSetAccess": [_u64, _size, _p(_AccessDesc), _size],
    "cuMemUnmap": [_u64, _size],
    "cuMemAddressFree": [_u64, _size],
    "cuMemRelease": [_u64],
}
_driver: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _driver
    if _driver is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaShareError(f"no CUDA driver library: {exc}") from exc
        for name, argtypes in _SIGNATURES.items():
            function = getattr(lib, name, None)
            if function is None:
                raise CudaShareError(f"the CUDA driver has no {name}")
            function.argtypes, function.restype = argtypes, ctypes.c_int
        _driver = lib
    return _driver


def _call(name: str, *args: Any) -> None:
    lib = _lib()
    code = getattr(lib, name)(*args)
    if code != 0:
        text = ctypes.c_char_p()
        lib.cuGetErrorName(code, ctypes.byref(text))
        raise CudaShareError(f"{name} failed: {(text.value or b'').decode() or code}")


def _device_index(device: str | torch.device) -> int:
    device = torch.device(device)
    if device.type != "cuda":
        raise CudaShareError(f"GPU memory sharing needs a CUDA device, not {device}")
    index = torch.cuda.current_device() if device.index is None else device.index
    torch.cuda.set_device(index)
    torch.empty(1, device=f"cuda:{index}")  # the primary context exists and is current on this thread
    return index


def _location(index: int) -> _Location:
    return _Location(CU_MEM_LOCATION_TYPE_DEVICE, index)


class _DeviceArray:
    """A device pointer as torch sees foreign GPU memory (the CUDA array interface)."""

    def __init__(self, pointer: int, size: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (size,),
            "typestr": "|u1",
            "data": (pointer, False),
            "strides": None,
            "version": 2,
        }


class SharedGpuBuffer:
    """One allocation of GPU memory mapped into this process as `tensor` (flat uint8, `size` bytes).

    `create` makes a new one and keeps an exportable file descriptor (`fd`) for another process;
    `open` maps one that another process created, from the descriptor it sent (and closes it).
    `close` unmaps it; the memory is freed when no process maps it any more."""

    def __init__(self, handle: int, size: int, index: int, fd: int | None) -> None:
        self.handle, self.size, self.index, self.fd = handle, size, index, fd
        self.pointer = 0
        try:
            reserved = _u64()
            _call("cuMemAddressReserve", ctypes.byref(reserved), size, 0, 0, 0)
            self.pointer = reserved.value
            _call("cuMemMap", self.pointer, size, 0, handle, 0)
            access = _AccessDesc(_location(index), CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            _call("cuMemSetAccess", self.pointer, size, ctypes.byref(access), 1)
            try:
                self.tensor = torch.as_tensor(_DeviceArray(self.pointer, size), device=f"cuda:{index}")
            except (RuntimeError, TypeError, ValueError) as exc:
                raise CudaShareError(f"torch cannot view the mapping: {exc}") from exc
        except BaseException:
            self.close()
            raise

    @staticmethod
    def granularity(device: str | torch.device) -> int:
        prop = _AllocationProp(
            CU_MEM_ALLOCATION_TYPE_PINNED,
            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            _location(_device_index(device)),
        )
        value = _size()
        _call(
            "cuMemGetAllocationGranularity",
            ctypes.byref(value),
            ctypes.byref(prop),
            CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
        )
        return int(value.value)

    @classmethod
    def create(cls, size: int, device: str | torch.device) -> SharedGpuBuffer:
        """A new allocation of at least `size` bytes (rounded up to the driver's granularity)."""
        index = _device_index(device)
        step = cls.granularity(device)
        size = -(-size // step) * step
        prop = _AllocationProp(
            CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, _location(index)
        )
        handle = _u64()
        _call("cuMemCreate", ctypes.byref(handle), size, ctypes.byref(prop), 0)
        fd = ctypes.c_int(-1)
        try:
            _call(
                "cuMemExportToShareableHandle",
                ctypes.byref(fd),
                handle.value,
                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                0,
            )
        except BaseException:
            _call("cuMemRelease", handle.value)
            raise
        return cls(handle.value, size, index, fd.value)

    @classmethod
    def open(cls, fd: int, size: int, device: str | torch.device) -> SharedGpuBuffer:
        """Map the allocation behind `fd` (from another process's `create`); `fd` is closed."""
        try:
            index = _device_index(device)
            handle = _u64()
            _call(
                "cuMemImportFromShareableHandle", ctypes.byref(handle), ctypes.c_void_p(fd),
                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            )  # fmt: skip
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        return cls(handle.value, size, index, None)

    def close(self) -> None:
        """Unmap and release (after the GPU is done with it: the device is synchronised first)."""
        self.__dict__.pop("tensor", None)
        if self.pointer:
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(self.index)
            with contextlib.suppress(CudaShareError):
                _call("cuMemUnmap", self.pointer, self.size)
            with contextlib.suppress(CudaShareError):
                _call("cuMemAddressFree", self.pointer, self.size)
            self.pointer = 0
        if self.handle:
            with contextlib.suppress(CudaShareError):
                _call("cuMemRelease", self.handle)
            self.handle = 0
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
