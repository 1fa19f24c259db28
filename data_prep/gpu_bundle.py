"""make gpu-bundle: the packages ``make gpu-check`` needs on a lent GPU machine, as one carried ``.tar.xz``.

    python -m data_prep.gpu_bundle --out gpu_bundle [--python-version 3.12]

Such a machine has its own Python (3.12) with PyTorch, numpy, pandas, SciPy, scikit-image, matplotlib, psutil,
timm and the like, and no package registry. What our training, prediction and phantom need beyond that
(nnU-Net and its own packages, SimpleITK, nibabel, pydicom, Hydra) is downloaded here as wheels for that Python,
at the versions this environment runs, unpacked into one folder and packed as ``<out>/site.tar.xz`` (about
40 MB; a call carries 64 MiB): on the machine ``tar -xJf`` and ``PYTHONPATH`` are all the set-up. A package
published only as source is built here into a wheel, which must then be pure Python.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

# Beyond the GPU image's own packages (device tool KINDS.md): what `python -m totalseg_train`, its nnU-Net
# trainers, `totalseg_train.runtime` and `data_prep.phantom.study` import. wandb stays behind (logger=none).
CARRIED = ("nnunetv2", "batchgenerators", "batchgeneratorsv2", "dynamic-network-architectures", "acvl-utils",
           "blosc2", "ndindex", "connected-components-3d", "nibabel", "SimpleITK", "pydicom", "yacs", "graphviz",
           "hydra-core", "omegaconf", "antlr4-python3-runtime", "future", "unittest2")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def pinned() -> list[str]:
    """Each carried package at the version installed here."""
    return [f"{name}=={metadata.version(name)}" for name in CARRIED]


def download(requirement: str, python_version: str, wheels: Path) -> None:
    """A wheel of ``requirement`` for the target Python (binary for its platform, or pure Python)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                          "--python-version", python_version, *platforms, "--dest", str(wheels), requirement],
                         capture_output=True, text=True)
    if got.returncode == 0:
        return
    before = set(wheels.glob("*.whl"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels),
                            requirement], capture_output=True, text=True)
    new = set(wheels.glob("*.whl")) - before
    pure = all(w.name.endswith(("-py3-none-any.whl", "-py2.py3-none-any.whl")) for w in new)
    if built.returncode or not new or not pure:  # a wheel built here for a compiled package is for this Python
        raise SystemExit(f"gpu-bundle: no wheel of {requirement} for Python {python_version}:\n{got.stderr[-1500:]}"
                         f"{built.stderr[-1500:]}")


def build(out: Path, python_version: str) -> Path:
    """Download, unpack and pack the carried packages; returns ``<out>/site.tar.xz``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        wheels, site = Path(scratch) / "wheels", Path(scratch) / "site"
        wheels.mkdir()
        for requirement in pinned():
            print(f"gpu-bundle: {requirement}", flush=True)
            download(requirement, python_version, wheels)
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
        packed = out / "site.tar.xz"
        with tarfile.open(packed.with_suffix(".tmp"), "w:xz") as tar:
            for path in sorted(site.iterdir()):
                tar.add(path, arcname=path.name)
        packed.with_suffix(".tmp").replace(packed)
    print(f"gpu-bundle: {packed} ({packed.stat().st_size / 2**20:.1f} MB)")
    return packed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_bundle"))
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (KINDS.md: 3.12)")
    args = parser.parse_args(argv)
    build(args.out, args.python_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
