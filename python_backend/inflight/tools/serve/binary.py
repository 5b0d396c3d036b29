"""Find a ``tritonserver`` binary and the environment its Python backend needs.

Three sources, first match wins:

1. ``INFLIGHT_TRITONSERVER`` (read through :func:`inflight.env.tritonserver_path`);
2. ``tritonserver`` on ``PATH`` (NGC containers: backends in ``/opt/tritonserver/backends``);
3. the server shipped inside the ``nvidia-pytriton`` wheel
   (``site-packages/pytriton/tritonserver/bin/tritonserver``).

The wheel's layout (nvidia-pytriton 0.5-0.7)::

    site-packages/
      nvidia_pytriton.libs/            # auditwheel-vendored .so files (libtritonserver, libcudart...)
      pytriton/tritonserver/
        bin/tritonserver               # RPATH $ORIGIN/../../../nvidia_pytriton.libs
        backends/python/libtriton_python.so   # RPATH $ORIGIN/../../../../nvidia_pytriton.libs
        caches/local/libtritoncache_local.so
        python_backend_stubs/3.X/triton_python_backend_stub   # one per Python version

The stub (RPATH ``$ORIGIN/../../../../nvidia_pytriton.libs``) finds its libraries relative to
its own location, so the stub for the running Python version is copied into
``backends/python/`` (PyTriton does the same, into a per-run copy of the tree). Its
``libpython3.X.so`` is resolved through ``LD_LIBRARY_PATH``: without the running
interpreter's ``LIBDIR`` there, the dynamic linker may pick the system libpython of the same
version, whose ``sys.path`` has neither this environment's packages nor ``inflight``.
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import shutil
import site
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from inflight import env as inflight_env
from inflight.errors import InflightError

NGC_BACKEND_DIR = Path("/opt/tritonserver/backends")
STUB_NAME = "triton_python_backend_stub"

NOT_FOUND_HINT = (
    "tritonserver not found: install nvidia-pytriton (pip install 'inflight[serve]') "
    "or put tritonserver on PATH (or set INFLIGHT_TRITONSERVER to the binary)"
)


class TritonServerNotFoundError(InflightError, FileNotFoundError):
    """No usable ``tritonserver`` binary (or no Python backend stub for this Python)."""


class StubNumpyError(TritonServerNotFoundError):
    """The Python backend stub cannot read tensors with the installed numpy."""


def check_stub_numpy(stub: Path, numpy_version: str | None = None) -> None:
    """Refuse a stub built with pybind11 < 2.12 when numpy >= 2 is installed.

    Such a stub (e.g. tritonserver 2.51 in nvidia-pytriton 0.7) reads numpy 2 dtypes' item
    size as 0 and turns every input tensor into copies of its first byte or element
    (pybind/pybind11#5009, fixed for Triton in python_backend#384, release 24.11): string
    inputs then fail in ``deserialize_bytes_tensor`` and numeric ones are silently wrong.
    A pybind11 >= 2.12 stub names the module ``numpy._core``; an older one only
    ``numpy.core``.
    """
    if numpy_version is None:
        try:
            from importlib.metadata import version

            numpy_version = version("numpy")
        except Exception:  # noqa: BLE001 - numpy missing: nothing to check
            return
    if int(numpy_version.split(".")[0]) < 2 or not stub.is_file():
        return
    data = stub.read_bytes()
    if b"numpy._core" in data or b"numpy.core.multiarray" not in data:
        return
    raise StubNumpyError(
        f"the Python backend stub {stub} was built with pybind11 < 2.12 and misreads every "
        f"tensor under numpy {numpy_version} (pybind/pybind11#5009): put a tritonserver >= 2.52 "
        "(NGC 24.11 or newer) on PATH, or install numpy<2 in this environment (pip install "
        "'numpy<2'), which works only if nothing installed requires numpy 2"
    )


@dataclass(frozen=True)
class TritonServerBinary:
    """A runnable ``tritonserver`` and what it needs around it.

    ``env`` holds only the variables to set on top of ``os.environ`` (already merged with
    their current values); :meth:`environ` gives the full environment for ``subprocess``.
    """

    path: Path
    backend_dir: Path | None
    env: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None  # --cache-directory (the wheel ships the local cache)
    source: str = "path"  # "env" | "path" | "pytriton"

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        merged = {**os.environ, **self.env}
        if extra:
            merged.update(extra)
        return merged

    def server_args(self) -> list[str]:
        """Flags that make this binary find its backends and caches."""
        args: list[str] = []
        if self.backend_dir is not None:
            args.append(f"--backend-directory={self.backend_dir}")
        if self.cache_dir is not None:
            args.append(f"--cache-directory={self.cache_dir}")
        return args


def find_tritonserver() -> TritonServerBinary:
    """Locate tritonserver (env var, then PATH, then the nvidia-pytriton wheel).

    Raises :class:`TritonServerNotFoundError` with an install hint when there is none.
    """
    explicit = inflight_env.tritonserver_path()
    if explicit:
        return _from_explicit(Path(explicit).expanduser())
    on_path = shutil.which("tritonserver")
    if on_path:
        return _from_system(Path(on_path), source="path")
    wheel_root = pytriton_root()
    if wheel_root is not None and (wheel_root / "tritonserver" / "bin" / "tritonserver").is_file():
        return _from_pytriton(wheel_root)
    raise TritonServerNotFoundError(NOT_FOUND_HINT)


def pytriton_root() -> Path | None:
    """``site-packages/pytriton`` without importing it (its ``__init__`` is heavy)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _from_explicit(path: Path) -> TritonServerBinary:
    if not path.is_file() or not os.access(path, os.X_OK):
        raise TritonServerNotFoundError(
            f"INFLIGHT_TRITONSERVER={path} is not an executable file; unset it to use "
            "tritonserver from PATH or from the nvidia-pytriton wheel"
        )
    root = pytriton_root()
    wheel_bin = root / "tritonserver" / "bin" / "tritonserver" if root else None
    if wheel_bin is not None and wheel_bin.exists() and path.resolve() == wheel_bin.resolve():
        return _from_pytriton(root)  # type: ignore[arg-type]
    return _from_system(path, source="env")


def _from_system(path: Path, source: str) -> TritonServerBinary:
    """A full Triton install (NGC image, or a build): its stub matches its own Python."""
    beside = path.resolve().parent.parent / "backends"
    backend_dir = beside if beside.is_dir() else NGC_BACKEND_DIR
    check_stub_numpy(backend_dir / "python" / STUB_NAME)
    return TritonServerBinary(
        path=path,
        backend_dir=backend_dir if backend_dir.is_dir() else None,
        env=python_env(),
        source=source,
    )


def _from_pytriton(root: Path) -> TritonServerBinary:
    dist = root / "tritonserver"
    stub = stub_source(root)
    check_stub_numpy(stub)
    libs = pytriton_libs_dir(root)
    try:
        install_stub(stub, dist / "backends" / "python")
    except OSError:
        # Read-only site-packages: run a private copy of the tree instead (as PyTriton
        # does); the vendored libs are then found through LD_LIBRARY_PATH, not RPATH.
        dist = _private_copy(dist, stub)
    env = python_env()
    env["LD_LIBRARY_PATH"] = _join_paths(
        [*_libpython_dirs(), str(libs)], os.environ.get("LD_LIBRARY_PATH", "")
    )
    return TritonServerBinary(
        path=dist / "bin" / "tritonserver",
        backend_dir=dist / "backends",
        env=env,
        cache_dir=dist / "caches" if (dist / "caches").is_dir() else None,
        source="pytriton",
    )


def stub_source(root: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / version / STUB_NAME
    if not stub.is_file():
        stubs = root / "tritonserver" / "python_backend_stubs"
        have = sorted(p.name for p in stubs.iterdir() if p.is_dir()) if stubs.is_dir() else []
        raise TritonServerNotFoundError(
            f"nvidia-pytriton at {root} has no Python backend stub for Python {version} "
            f"(it has: {', '.join(have) or 'none'}); use a supported Python or a tritonserver "
            "on PATH"
        )
    return stub


def pytriton_libs_dir(root: Path) -> Path:
    wheel_libs = root.parent / "nvidia_pytriton.libs"
    return wheel_libs if wheel_libs.is_dir() else root / "tritonserver" / "external_libs"


def install_stub(stub: Path, backend_python_dir: Path) -> Path:
    """Copy ``stub`` into ``backend_python_dir`` unless an identical copy is there.

    The copy goes through a temporary file and ``os.replace`` so a concurrently starting
    server never sees a half-written stub.
    """
    dst = backend_python_dir / STUB_NAME
    if dst.is_file() and filecmp.cmp(stub, dst, shallow=False) and os.access(dst, os.X_OK):
        return dst
    fd, tmp = tempfile.mkstemp(prefix=".stub-", dir=backend_python_dir)
    os.close(fd)
    try:
        shutil.copyfile(stub, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def _private_copy(dist: Path, stub: Path) -> Path:
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    target = Path(inflight_env.cache_dir()) / f"tritonserver-{version}"
    if not (target / "bin" / "tritonserver").is_file():
        shutil.copytree(
            dist, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("python_backend_stubs")
        )
    install_stub(stub, target / "backends" / "python")
    return target


def python_env() -> dict[str, str]:
    """PATH and PYTHONPATH that make a Python backend stub see this interpreter's packages.

    The stub embeds Python in isolated mode (measured with tritonserver 2.51 from
    nvidia-pytriton 0.7: ``sys.flags.isolated == 1``, so ``PYTHONPATH`` and the user site
    are ignored). What puts this environment on its ``sys.path`` is the same libpython
    (``LD_LIBRARY_PATH``, see :func:`_from_pytriton`) and prefix discovery through
    ``python3`` on ``PATH``, which also finds a venv's ``pyvenv.cfg``; site-packages then
    comes with its ``.pth`` files, which is how an editable ``inflight`` resolves. So this
    interpreter's ``bin`` goes first on ``PATH``. ``PYTHONPATH`` (the directory ``inflight``
    was imported from, then site-packages) is exported too, for stubs built without
    isolation and for processes a model starts.
    """
    bin_dir = str(Path(sys.executable).parent)
    python_path = [*_inflight_import_roots(), *_site_packages()]
    return {
        "PATH": _join_paths([bin_dir], os.environ.get("PATH", "")),
        "PYTHONPATH": _join_paths(python_path, os.environ.get("PYTHONPATH", "")),
    }


def _inflight_import_roots() -> list[str]:
    import inflight

    # inflight/__init__.py's grandparent; not __path__, which editable installs pad out.
    return [str(Path(inflight.__file__).resolve().parent.parent)] if inflight.__file__ else []


def _site_packages() -> list[str]:
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    purelib = sysconfig.get_paths()["purelib"]
    return [d for d in [*dirs, purelib] if os.path.isdir(d)]


def _libpython_dirs() -> list[str]:
    """The directory of this interpreter's shared libpython, when it has one."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return []
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    candidates = [sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LIBPL")]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch and candidates[0]:
        candidates.append(os.path.join(candidates[0], multiarch))
    return [d for d in candidates if d and soname and os.path.isfile(os.path.join(d, soname))][:1]


def _join_paths(first: list[str], existing: str) -> str:
    """``first`` then ``existing`` (colon separated), without duplicates or empties."""
    out: list[str] = []
    for item in [*first, *existing.split(os.pathsep)]:
        if item and item not in out:
            out.append(item)
    return os.pathsep.join(out)
