"""Build the llama.cpp memory oracle once into the cache (never into the repo).

llama.cpp is the ground truth for the footprint estimator. CI starts from a clean clone, so this
module fetches the llama-cpp-python sdist from PyPI (it vendors the whole llama.cpp tree), builds
the CPU tools with Debian's cmake/ninja/g++, and links tests/oracle/probe.cpp against the static
libraries. Everything lands under $VRAMGATE_CACHE (default ~/.cache/vramgate). Each step is skipped
when its result exists; builds happen in a temporary directory that is renamed into place only
when complete, so an interrupted build is never mistaken for a finished one.

Run as a script to build ahead of the tests: `uv run python -m tests.oracle.build` or
`uv run python tests/oracle/build.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_DIR = f"llama_cpp_python-{SDIST_VERSION}"
PROBE_SOURCE = Path(__file__).with_name("probe.cpp")
CMAKE_FLAGS = [
    "-G", "Ninja",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_CURL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
]
DEBIAN_TOOLS = {"cmake": "cmake", "ninja": "ninja-build", "g++": "g++"}


@dataclass(frozen=True)
class Oracle:
    """Paths of a finished oracle build."""

    llama_root: Path  # vendor/llama.cpp source tree with BUILD/ inside
    fit_params: Path  # llama-fit-params binary
    probe: Path  # vramgate probe binary (exact bytes, llama-server output limits)

    @property
    def identity(self) -> str:
        """Changes whenever either binary changes; part of every measurement cache key."""
        parts = []
        for binary in (self.fit_params, self.probe):
            st = binary.stat()
            parts.append(f"{binary}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("VRAMGATE_CACHE") or Path.home() / ".cache" / "vramgate")


def _log(msg: str) -> None:
    print(f"[oracle-build] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    _log("$ " + shlex.join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builds between concurrent pytest sessions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ensure_debian_tools() -> None:
    missing = [pkg for tool, pkg in DEBIAN_TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing build tools {missing}; install them with apt-get (needs root)")
    _run(["apt-get", "update"])
    _run(["apt-get", "install", "-y", "--no-install-recommends", *missing])


def _pip_download_cmd(dest: Path) -> list[str]:
    args = ["download", "--no-deps", "--no-binary", ":all:", f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(dest)]
    for candidate in ("pip", "pip3"):
        exe = shutil.which(candidate)
        if exe:
            return [exe, *args]
    if shutil.which("uv"):
        return ["uv", "tool", "run", "--from", "pip", "pip", *args]
    return [sys.executable, "-m", "pip", *args]


def _ensure_sdist(cache: Path) -> Path:
    sdist_dir = cache / "sdist"
    found = sorted(sdist_dir.glob(f"llama_cpp_python-{SDIST_VERSION}.tar.gz"))
    if found:
        return found[0]
    tmp = Path(tempfile.mkdtemp(prefix=".sdist-", dir=cache))
    try:
        _run(_pip_download_cmd(tmp))
        tarballs = list(tmp.glob("*.tar.gz"))
        if len(tarballs) != 1:
            raise RuntimeError(f"pip download produced {tarballs}, expected one sdist")
        sdist_dir.mkdir(parents=True, exist_ok=True)
        final = sdist_dir / tarballs[0].name
        os.replace(tarballs[0], final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_llama_cpp(cache: Path, final_root: Path) -> None:
    """Unpack and build into a temp dir, then rename the whole tree into place."""
    _ensure_debian_tools()
    sdist = _ensure_sdist(cache)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        _log(f"unpacking {sdist.name}")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / SDIST_DIR / "vendor" / "llama.cpp"
        jobs = str(max(1, min(os.cpu_count() or 1, 4)))
        _run(["cmake", "-S", ".", "-B", "BUILD", *CMAKE_FLAGS], cwd=src)
        _run(["cmake", "--build", "BUILD", "--target", "llama-fit-params", "-j", jobs], cwd=src)
        if not (src / "BUILD" / "bin" / "llama-fit-params").exists():
            raise RuntimeError("llama.cpp build finished without llama-fit-params")
        target = cache / SDIST_DIR
        if target.exists():  # a stale tree without a finished build: move it aside, then drop it
            stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=cache))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp / SDIST_DIR, target)
        assert (final_root / "BUILD" / "bin" / "llama-fit-params").exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_libraries(llama_root: Path) -> list[str]:
    """The libraries llama-fit-params links, read from build.ninja (absolute or BUILD-relative)."""
    ninja = (llama_root / "BUILD" / "build.ninja").read_text()
    marker = "build bin/llama-fit-params:"
    block = ninja[ninja.index(marker):]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith("LINK_LIBRARIES ="))
    libs = []
    for item in shlex.split(line.split("=", 1)[1]):
        if "fit-params-impl" in item:
            continue
        if item.endswith(".a") and not item.startswith("/"):
            item = str(llama_root / "BUILD" / item)
        libs.append(item)
    return libs


def _build_probe(llama_root: Path, final: Path) -> None:
    _ensure_debian_tools()
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".probe-", dir=final.parent)
    os.close(fd)
    try:
        cmd = [
            "g++", "-std=c++17", "-O1",
            f"-I{llama_root / 'common'}", f"-I{llama_root / 'include'}",
            f"-I{llama_root / 'ggml' / 'include'}", f"-I{llama_root / 'vendor'}",
            str(PROBE_SOURCE), "-o", tmp_name,
            *_link_libraries(llama_root), "-fopenmp", "-lpthread",
        ]
        _run(cmd)
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, final)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _remove_leftovers(cache: Path) -> None:
    """Temp dirs of builds killed mid-way (SIGKILL skips `finally`); safe: we hold the build lock."""
    for pattern in (".build-*", ".sdist-*", ".stale-*", "oracle/.probe-*"):
        for leftover in cache.glob(pattern):
            _log(f"removing leftover {leftover}")
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def ensure_oracle() -> Oracle:
    """Return the oracle binaries, building whatever is missing (minutes the first time)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    llama_root = cache / SDIST_DIR / "vendor" / "llama.cpp"
    fit_params = llama_root / "BUILD" / "bin" / "llama-fit-params"
    probe_key = hashlib.sha256(PROBE_SOURCE.read_bytes()).hexdigest()[:12]
    probe = cache / "oracle" / f"vramgate-probe-{probe_key}"
    if fit_params.exists() and probe.exists():
        return Oracle(llama_root, fit_params, probe)
    with _locked(cache / ".oracle-build.lock"):
        _remove_leftovers(cache)
        if not fit_params.exists():
            _build_llama_cpp(cache, llama_root)
        if not probe.exists():
            _build_probe(llama_root, probe)
    return Oracle(llama_root, fit_params, probe)


if __name__ == "__main__":
    oracle = ensure_oracle()
    print(f"llama-fit-params: {oracle.fit_params}")
    print(f"probe:            {oracle.probe}")
