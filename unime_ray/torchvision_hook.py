"""Start-up hook that lets PyPI's CUDA-linked torchvision import beside a CPU torch.

torchvision's compiled ops link against CUDA torch, so on a CPU torch they fail to load
and ``torchvision/_meta_registrations.py`` then fails on ``torchvision::nms``: it
registers fake kernels for ``nms`` and ``qnms`` without checking that the ops exist.
Defining those two schemas right after ``torchvision.extension`` has run (and found no
compiled ops) makes ``import torchvision`` succeed; image transforms are plain torch.

It must act in every process, vLLM's spawned workers and its model-registry subprocess
included, so ``install()`` writes a ``.pth`` file into the environment's site-packages.
Processes that never import torchvision pay for one meta-path entry and nothing else.
On a CUDA machine (or with a matching CPU torchvision) the compiled ops load and the
hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "unime_ray_torchvision_hook.pth"
_TARGET = "torchvision.extension"
_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_libraries: list = []  # a torch Library unregisters its ops when garbage-collected


def define_missing_schemas() -> bool:
    """Define ``torchvision::nms`` and ``torchvision::qnms`` if absent; True if it did."""
    import torch

    if torch._C._jit_get_schemas_for_operator("torchvision::nms"):
        return False
    library = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        library.define(op + _SCHEMA)
    _libraries.append(library)
    return True


class _ExtensionFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``torchvision.extension`` once, then steps aside."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            # The schema check (not a torchvision flag, whose name changes between
            # releases) decides: with compiled ops loaded it is a no-op.
            define_missing_schemas()

        spec.loader.exec_module = exec_then_patch
        return spec


def register() -> None:
    """Put the finder first on ``sys.meta_path`` unless torchvision is already imported."""
    if _TARGET in sys.modules or any(isinstance(f, _ExtensionFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _ExtensionFinder())


def install(site_packages: str | None = None) -> Path:
    """Write the ``.pth`` start-up line into this environment's site-packages."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    # A .pth line that starts with "import" is executed at start-up; the guard keeps an
    # environment usable if the package is later uninstalled.
    target.write_text(
        "import importlib.util as _u; _u.find_spec('unime_ray') and "
        "__import__('unime_ray.torchvision_hook').torchvision_hook.register()\n"
    )
    return target


if __name__ == "__main__":
    print(install())
