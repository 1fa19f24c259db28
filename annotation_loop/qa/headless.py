"""Offscreen rendering without a display: wgpu on a GPU, or Mesa's software Vulkan on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

MESA_PACKAGE = "mesa-vulkan-drivers"


def _load_triton_first() -> None:
    """Load triton (torch's compiler, present in CUDA builds) before Mesa's driver.

    Mesa's software Vulkan brings its own LLVM; a process that loads triton after it crashes with a
    segmentation fault (seen when nnU-Net training follows a QA render in one process).
    """
    try:
        import triton  # noqa: F401
    except ImportError:
        pass


def prepare_environment() -> None:
    """Give the Vulkan loader the runtime folder it expects when no desktop session provides one."""
    _load_triton_first()
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path(f"/tmp/runtime-{os.getuid()}")
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def require_adapter() -> str:
    """The summary of the adapter wgpu renders with (the one pygfx will pick); a clear error when there is none."""
    prepare_environment()
    import wgpu

    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as exc:  # wgpu raises when no Vulkan / Metal / D3D12 / GL driver offers an adapter
        raise RuntimeError(_no_adapter_message(f" ({exc})")) from exc
    if adapter is None:
        raise RuntimeError(_no_adapter_message(""))
    return adapter.summary


def _no_adapter_message(detail: str) -> str:
    return (
        f"no GPU adapter found for offscreen 3D rendering{detail}. On a machine without a GPU install "
        f"Mesa's software Vulkan driver, Debian package {MESA_PACKAGE}: `sudo apt-get install {MESA_PACKAGE}` "
        "(or `make system-deps`)."
    )
