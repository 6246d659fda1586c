"""Let mmpose import under mmcv-lite, which has mmcv's Python code but not its compiled ops.

mmpose and mmdet import ``mmcv.ops`` at module level for models we never build (EDPose's
deformable attention, detection NMS, deformable convolutions). The full mmcv compiles those ops
from source (~12 min on 2 cores), too slow to install on every CI run. RTMPose uses none of
them, so when ``mmcv._ext`` is missing this shim serves ``mmcv.ops`` and its submodules with
placeholders: importing them works, *using* one raises `MmcvOpsUnavailableError` naming the op.
With the full mmcv installed the shim does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

_OPS_PACKAGE = "mmcv.ops"


class MmcvOpsUnavailableError(ImportError):
    """A compiled mmcv op was used, but only mmcv-lite is installed."""


def _placeholder(qualname: str) -> type:
    """A class standing in for an op: subclassing and registering work, calling raises."""

    def refuse(cls: type, *args: Any, **kwargs: Any) -> NoReturn:
        raise MmcvOpsUnavailableError(
            f"{qualname} needs mmcv's compiled ops, which mmcv-lite does not have; the RTMPose "
            "pipeline never uses it. Install the full mmcv==2.1.0 to build models that do."
        )

    return type(qualname.rsplit(".", 1)[-1], (), {"__new__": refuse, "__module__": _OPS_PACKAGE})


class _PlaceholderModule(types.ModuleType):
    # mmcv.ops re-exports functions named like their submodules (`mmcv.ops.nms` is both);
    # once the submodule is imported, the attribute is the module: calling it must fail the
    # same clear way.
    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        _placeholder(self.__name__)()
        raise AssertionError("unreachable: the placeholder raises")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)  # the same object on every access
        return value


class _MmcvOpsFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == _OPS_PACKAGE or fullname.startswith(_OPS_PACKAGE + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _PlaceholderModule(spec.name)
        module.__path__ = []  # a package, so `mmcv.ops.nms` style imports resolve here too
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: attributes are created on access."""


def mmcv_has_compiled_ops() -> bool:
    """True when the installed mmcv is the full build (``mmcv._ext`` exists)."""
    return importlib.util.find_spec("mmcv._ext") is not None


def install_mmcv_ops_shim() -> bool:
    """Install the shim if mmcv is present without compiled ops; True when it is active."""
    if importlib.util.find_spec("mmcv") is None:
        return False
    if any(isinstance(finder, _MmcvOpsFinder) for finder in sys.meta_path):
        return True
    if mmcv_has_compiled_ops():
        return False
    if _OPS_PACKAGE in sys.modules:
        # Someone imported mmcv.ops for real before us: with mmcv-lite that import failed and
        # left no module, so reaching here means a real mmcv.ops is loaded; leave it alone.
        return False
    sys.meta_path.insert(0, _MmcvOpsFinder())
    logger.info("mmcv-lite detected: serving mmcv.ops with placeholders (see %s)", __name__)
    return True
