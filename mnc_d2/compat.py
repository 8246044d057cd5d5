"""Every compatibility shim mnc_d2 needs, in one place, armed by ``import mnc_d2``.

mnc_d2 runs on two Detectron2 builds:

* upstream detectron2 installed from git (C++/CUDA ops compiled), and
* the upstream v0.6 Python sources from PyPI (``pb1-detectron2==0.6``) installed as pure Python
  by ``tools/install_detectron2.py``, running on torch 2.14, numpy 2 and Pillow >= 10.

Detectron2's extension convention is that importing the extension is all a user does before
using Detectron2 (``import mnc_d2; from detectron2.data import DatasetCatalog``), while mnc_d2's
torch-free tools (the scorer, the footprint merge) must not pay for torch. So ``import mnc_d2``
imports neither: :func:`install` puts one finder on ``sys.meta_path`` that acts when Detectron2
itself is imported:

* before the first ``detectron2`` module runs, the *pre-import* shims below (1-4, 6);
* after ``detectron2.engine`` has run, shim 5 (CPU DDP);
* after ``detectron2.data`` has run, the built-in SpaceNet names are registered; after
  ``detectron2.modeling`` has run, the MNC ROI head is (``import mnc_d2.modeling``).

When Detectron2 was imported before mnc_d2, :func:`install` applies whatever is still due at
once. Each shim says which version needs it and why, and is conditional: it only acts when the
thing it replaces is missing or known-broken, so it is a no-op on a build that has it. No file of
detectron2 is edited. ``applied_shims()`` lists what was done (logged at DEBUG, tested).

The CPU multi-process launcher lives in :mod:`mnc_d2.engine.launch` (it is a function of ours,
not a patch).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
import warnings

logger = logging.getLogger(__name__)

_APPLIED: list[str] = []
_DONE = False


def applied_shims() -> list[str]:
    """Names of the shims that were needed (and applied) in this process."""
    return list(_APPLIED)


# --- 1. detectron2._C (v0.6 from the PyPI sdist: the C++ ops are not built) -------------------
# v0.6 imports ``detectron2._C`` at module level in layers/deform_conv.py, roi_align_rotated.py,
# rotated_boxes.py and evaluation/fast_eval_api.py, so ``import detectron2.layers`` fails without
# it. MNC never calls those ops (rotated boxes, deformable conv, fast COCOeval); the stand-in
# raises a clear NotImplementedError if anything does. ``collect_env`` (called by
# ``default_setup``) reads get_compiler_version/get_cuda_version/has_cuda from it.
class _MissingCppOps(types.ModuleType):
    """Stand-in for detectron2's compiled extension when it was not built."""

    _INFO = {
        "get_compiler_version": lambda: "not built (pure-Python detectron2, see mnc_d2.compat)",
        "get_cuda_version": lambda: "not built",
        "has_cuda": lambda: False,
    }

    def __getattr__(self, name: str):
        if name in self._INFO:
            return self._INFO[name]
        if name.startswith("__"):
            raise AttributeError(name)

        def _missing(*args, **kwargs):
            raise NotImplementedError(
                f"detectron2._C.{name} is a C++ op that this pure-Python detectron2 build lacks. "
                "MNC does not need it; if you do (rotated boxes, deformable conv, fast COCOeval), "
                "install upstream detectron2: DETECTRON2_SOURCE=<git URL or checkout> make setup"
            )

        return _missing


def _shim_missing_cpp_ops() -> None:
    if "detectron2._C" in sys.modules:
        return
    # Look for the compiled module next to detectron2's sources without running detectron2's
    # __init__ (which imports torch): the tools that never touch Detectron2 stay torch-free.
    package = sys.modules.get("detectron2")
    if package is not None:
        locations = list(getattr(package, "__path__", []))
    else:
        spec = importlib.machinery.PathFinder.find_spec("detectron2")
        locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        return  # detectron2 is not installed: nothing to stand in for
    if importlib.machinery.PathFinder.find_spec("detectron2._C", locations) is not None:
        return
    sys.modules["detectron2._C"] = _MissingCppOps("detectron2._C")
    _APPLIED.append("detectron2._C stand-in")


# --- 2. PIL.Image.LINEAR (v0.6 on Pillow >= 10) -------------------------------------------------
# v0.6's data/transforms/transform.py uses ``Image.LINEAR`` as a default argument (evaluated at
# import); Pillow 10 removed that alias of BILINEAR. Upstream main no longer uses it.
def _shim_pil_linear() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        _APPLIED.append("PIL.Image.LINEAR alias")


# --- 3. pkg_resources (v0.6 model_zoo with setuptools >= 82) ------------------------------------
# v0.6's model_zoo imports pkg_resources only for ``resource_filename``; setuptools 82 dropped
# pkg_resources. Our constraints pin setuptools<82; this stand-in covers environments that don't.
def _shim_pkg_resources() -> None:
    if importlib.util.find_spec("pkg_resources") is not None:
        return
    from importlib import resources as importlib_resources

    def resource_filename(package: str, resource: str) -> str:
        return str(importlib_resources.files(package).joinpath(resource))

    module = types.ModuleType("pkg_resources")
    module.resource_filename = resource_filename
    sys.modules["pkg_resources"] = module
    _APPLIED.append("pkg_resources stand-in (resource_filename only)")


# --- 4. numpy scalar-type aliases (v0.6 on numpy >= 1.24) ---------------------------------------
# v0.6 uses np.int / np.float / np.object in the SemSeg evaluator, the VOC evaluator and the class
# histogram of data/build.py (whose failure it swallows silently). numpy 1.24 removed them.
def _shim_numpy_aliases() -> None:
    import numpy as np

    for name, value in (("int", int), ("float", float), ("object", object), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, value)
            _APPLIED.append(f"numpy.{name} alias")


# --- 5. create_ddp_model on CPU (v0.6 and upstream main) ----------------------------------------
# ``DefaultTrainer`` wraps the model with ``create_ddp_model(model, broadcast_buffers=False)``,
# which always passes ``device_ids=[local_rank]``; DistributedDataParallel rejects device_ids for
# a CPU module. On CPU we pass ``device_ids=None``; on GPU detectron2's own function runs as is.
def _shim_cpu_ddp() -> None:
    import detectron2.engine as d2_engine
    import detectron2.engine.defaults as d2_defaults

    original = d2_defaults.create_ddp_model
    if getattr(original, "_mnc_d2_cpu_ok", False):
        return

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        params = list(model.parameters())
        if "device_ids" not in kwargs and params and params[0].device.type == "cpu":
            kwargs["device_ids"] = None
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model._mnc_d2_cpu_ok = True
    create_ddp_model.__doc__ = original.__doc__
    d2_defaults.create_ddp_model = create_ddp_model
    d2_engine.create_ddp_model = create_ddp_model
    _APPLIED.append("create_ddp_model: device_ids=None for CPU models")


# --- 6. torch >= 2.10 deprecates torch.jit.script with a FutureWarning; detectron2 (v0.6 and main)
# decorates a few helpers with it at import time, so every command printed the warning twice.
# Its anchor generator calls torch.meshgrid without ``indexing`` (the "ij" order it means is
# torch's default), a UserWarning at every model's first tile. And fvcore's vertical flip wraps a
# read-only array (Detectron2's resize returns PIL's buffer) in a tensor, which torch warns
# about at every training start although the flip only reads it. All still work; only those
# messages are silenced (the last only when raised from fvcore's transforms), not FutureWarnings
# or UserWarnings at large.
def _silence_detectron2_deprecations() -> None:
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release, it will "
                            r"be required to pass the indexing argument", category=UserWarning)
    warnings.filterwarnings("ignore", message=r"The given NumPy array is not writable",
                            category=UserWarning, module=r"fvcore\.transforms\.transform")
    if not _DONE:
        _APPLIED.append("silence torch.jit.script FutureWarning raised by detectron2 imports, "
                        "torch.meshgrid's UserWarning raised by its anchor generator and the "
                        "read-only-array UserWarning raised by fvcore's flip")


def _register_builtin_datasets() -> None:
    from .data.builtin import register_builtin_spacenet

    register_builtin_spacenet()


def _register_roi_head() -> None:
    importlib.import_module("mnc_d2.modeling")  # @ROI_HEADS_REGISTRY.register() on import


_PRE_IMPORT = (_silence_detectron2_deprecations, _shim_missing_cpp_ops, _shim_pil_linear,
               _shim_pkg_resources, _shim_numpy_aliases)
# Detectron2 module -> what runs once it has been imported (in this order).
_AFTER_IMPORT = {
    "detectron2.engine": (_shim_cpu_ddp,),
    "detectron2.data": (_register_builtin_datasets,),
    "detectron2.modeling": (_register_roi_head,),
}
_PENDING = dict(_AFTER_IMPORT)  # not run yet in this process


def _run_pre_import() -> None:
    global _DONE
    if _DONE:
        return
    for shim in _PRE_IMPORT:
        shim()
    _DONE = True  # only once every shim succeeded: a failed one is tried again next import
    if _APPLIED:
        logger.debug("mnc_d2 compatibility shims applied: %s", ", ".join(_APPLIED))


def _run_after_import(name: str) -> None:
    for action in _PENDING.get(name, ()):
        action()  # an error propagates, and the module's next import runs the actions again
    _PENDING.pop(name, None)


class _AfterImportLoader(importlib.abc.Loader):
    """Runs a module with its own loader, then mnc_d2's actions for it."""

    def __init__(self, loader: importlib.abc.Loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _run_after_import(self._name)

    def __getattr__(self, attr):  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, attr)


class _Detectron2Hook(importlib.abc.MetaPathFinder):
    """The ``sys.meta_path`` finder :func:`install` adds (see the module docstring)."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != "detectron2" and not fullname.startswith("detectron2."):
            return None
        _run_pre_import()
        if fullname not in _PENDING:
            return None
        for finder in sys.meta_path:  # the finder that would have found it without us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _AfterImportLoader(spec.loader, fullname)
                return spec
        return None


_HOOK = _Detectron2Hook()


def install() -> None:
    """Arm the shims and registrations (cheap, idempotent; see the module docstring).

    Already-imported Detectron2 modules get their pre- and after-import actions at once.
    """
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
    if "detectron2" in sys.modules:
        _run_pre_import()
    for name in [n for n in _PENDING if n in sys.modules]:
        _run_after_import(name)


def apply() -> None:
    """Apply every shim and registration now (imports detectron2 and torch).

    ``import mnc_d2`` already arranges for all of it to happen when Detectron2 is imported;
    this only forces it, e.g. before timing something.
    """
    install()
    for name in list(_AFTER_IMPORT):
        importlib.import_module(name)
