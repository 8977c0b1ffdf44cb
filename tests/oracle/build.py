"""Build the llama.cpp memory oracle once into the cache (never into the repo).

llama.cpp is the ground truth for the footprint estimator. CI starts from a clean clone, so this
module fetches the llama-cpp-python sdist from PyPI (it vendors the whole llama.cpp tree), builds
the CPU tools with Debian's cmake/ninja/g++, and links tests/oracle/probe.cpp against the static
libraries. Everything lands under $VRAMGATE_CACHE (default ~/.cache/vramgate). Each step is skipped
when its result exists; builds happen in a temporary directory that is renamed into place only
when complete, so an interrupted build is never mistaken for a finished one. A finished tree is
pruned to what the tests and a probe rebuild need (llama-fit-params, build.ninja, the static
libraries, the headers on the probe's include path, the C++ sources of tools/mtmd), and the
downloaded sdist is dropped. ``ensure_vision_probe`` then compiles tests/oracle/probe_vision.cpp
with llama.cpp's clip (tools/mtmd) against the same static libraries (about a minute on 2 cores;
a tree pruned before tools/mtmd was kept gets those sources from the sdist again).

Progress (a line per step with the elapsed time, every 10% of the compile) goes through
``set_progress_writer`` (tests/conftest.py routes it past pytest's output capture) or to stderr.
The build's own output goes to $VRAMGATE_CACHE/oracle-build.log; a failure quotes its tail.

Run as a script to build ahead of the tests: `uv run python -m tests.oracle.build` or
`uv run python tests/oracle/build.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_DIR = f"llama_cpp_python-{SDIST_VERSION}"
SDIST_DIR_TO_LLAMA = Path("vendor") / "llama.cpp"
PROBE_SOURCE = Path(__file__).with_name("probe.cpp")
VISION_PROBE_SOURCE = Path(__file__).with_name("probe_vision.cpp")
#: llama.cpp's multimodal sources (clip.cpp, its headers, the encoder graphs in models/), kept in
#: the pruned tree: the vision probe compiles clip.cpp into itself (its byte counters are private)
MTMD_DIR = Path("tools") / "mtmd"
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
#: Source directories (under vendor/llama.cpp) whose headers the probe compiles against: its -I
#: directories, and src/ (probe.cpp includes "../src/llama-ext.h" through common/).
PROBE_HEADER_DIRS = ("include", "common", "src", "ggml/include", "vendor")
PRUNED_MARKER = ".vramgate-pruned"  # in BUILD/: the tree holds only what is listed above


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


_progress_writer: Callable[[str], None] | None = None
_started: float | None = None  # when this process logged its first progress line
_announced_waits: set[Path] = set()


def set_progress_writer(writer: Callable[[str], None] | None) -> None:
    """Where progress lines go (default: stderr); pytest's conftest sends them to the terminal."""
    global _progress_writer
    _progress_writer = writer


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def log(msg: str) -> None:
    """One progress line, stamped with the time since this process started building."""
    global _started
    if _started is None:
        _started = time.monotonic()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    line = f"[oracle-build{' ' + worker if worker else ''} {_clock(time.monotonic() - _started)}] {msg}"
    if _progress_writer is not None:
        _progress_writer(line)
    else:
        print(line, file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path | None = None, on_line: Callable[[str], None] | None = None) -> None:
    """Run a build command, its output appended to the build log (quoted when it fails)."""
    log_path = cache_dir() / "oracle-build.log"
    tail: deque[str] = deque(maxlen=40)
    with open(log_path, "a") as log_file:
        log_file.write(f"\n$ {shlex.join(cmd)}\n")
        log_file.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            tail.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(
            f"oracle build step failed (exit {rc}): {shlex.join(cmd)}\n"
            f"last lines (whole log: {log_path}):\n" + "\n".join(tail)
        )


@contextmanager
def _step(what: str) -> Iterator[None]:
    log(what)
    began = time.monotonic()
    yield
    log(f"{what}: done in {time.monotonic() - began:.0f} s")


def _compile_progress(every: int = 10, what: str = "llama.cpp") -> Callable[[str], None]:
    """An on_line callback logging each `every`% of ninja's "[done/total]" lines."""
    ninja_line = re.compile(r"^\[(\d+)/(\d+)\]")
    state = {"next": every}

    def on_line(line: str) -> None:
        m = ninja_line.match(line)
        if not m:
            return
        done, total = int(m[1]), int(m[2])
        percent = 100 * done // total
        if percent >= state["next"]:
            log(f"compiling {what}: {percent}% ({done}/{total} steps)")
            state["next"] = (percent // every + 1) * every

    return on_line


@contextmanager
def file_lock(path: Path, waiting: str) -> Iterator[None]:
    """An exclusive flock on `path`, shared by concurrent pytest sessions and xdist workers.

    When another process holds it, says so (`waiting`; once per process and lock), then blocks
    until it is free.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            announce = path not in _announced_waits
            _announced_waits.add(path)
            if announce:
                log(waiting)
            began = time.monotonic()
            fcntl.flock(fh, fcntl.LOCK_EX)
            if announce:
                log(f"the other process is done; waited {time.monotonic() - began:.0f} s")
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
    with _step(f"installing {' '.join(missing)} with apt-get"):
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
        with _step(f"downloading the {SDIST_NAME} {SDIST_VERSION} sdist from PyPI (about 75 MB; it vendors llama.cpp)"):
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


def _tree_bytes(root: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in root.rglob("*") if f.is_file() and not f.is_symlink())


def _prune(sdist_root: Path) -> None:
    """Keep only what the tests and a probe rebuild use; the marker is written last.

    Kept: BUILD/bin/llama-fit-params, BUILD/build.ninja (the probe's link line), the static
    libraries under BUILD, and the headers of PROBE_HEADER_DIRS. Everything else (the rest of the
    sdist, sources, object files, CMake's files, llama.cpp's docs and vocab models) goes, except the
    C++ sources and headers of tools/mtmd, which the vision probe compiles (about 1 MB).
    Idempotent, so a tree pruned half-way (killed) is finished by the next call.
    """
    llama = sdist_root / SDIST_DIR_TO_LLAMA
    build = llama / "BUILD"
    keep_files = {build / "bin" / "llama-fit-params", build / "build.ninja"}
    header_dirs = tuple(llama / d for d in PROBE_HEADER_DIRS)
    mtmd = llama / MTMD_DIR

    def wanted(path: Path) -> bool:
        if path in keep_files:
            return True
        if path.is_relative_to(mtmd):
            return path.suffix in (".cpp", ".h")
        if path.is_relative_to(build):
            return path.suffix == ".a"
        return path.suffix in (".h", ".hpp") and any(path.is_relative_to(d) for d in header_dirs)

    before = _tree_bytes(sdist_root)
    for dirpath, dirnames, filenames in os.walk(sdist_root, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            path = here / name
            if not wanted(path):
                path.unlink()
        for name in dirnames:
            sub = here / name
            if sub.is_symlink():
                sub.unlink()
            elif not any(sub.iterdir()):
                sub.rmdir()
    (build / PRUNED_MARKER).touch()
    log(f"pruned the llama.cpp tree to what the tests use: {before / 1e6:.0f} MB -> {_tree_bytes(sdist_root) / 1e6:.0f} MB")


def _build_llama_cpp(cache: Path, final_root: Path) -> None:
    """Unpack, build and prune in a temp dir, then rename the whole tree into place."""
    _ensure_debian_tools()
    sdist = _ensure_sdist(cache)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        with _step(f"unpacking {sdist.name}"):
            with tarfile.open(sdist) as tar:
                tar.extractall(tmp, filter="data")
        src = tmp / SDIST_DIR / SDIST_DIR_TO_LLAMA
        jobs = str(max(1, min(os.cpu_count() or 1, 4)))
        with _step("cmake configure"):
            _run(["cmake", "-S", ".", "-B", "BUILD", *CMAKE_FLAGS], cwd=src)
        with _step(f"compiling llama.cpp (target llama-fit-params, {jobs} jobs; the long step)"):
            _run(["cmake", "--build", "BUILD", "--target", "llama-fit-params", "-j", jobs], cwd=src,
                 on_line=_compile_progress())
        if not (src / "BUILD" / "bin" / "llama-fit-params").exists():
            raise RuntimeError("llama.cpp build finished without llama-fit-params")
        _prune(tmp / SDIST_DIR)
        target = cache / SDIST_DIR
        if target.exists():  # a stale tree without a finished build: move it aside, then drop it
            stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=cache))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp / SDIST_DIR, target)
        assert (final_root / "BUILD" / "bin" / "llama-fit-params").exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # the tree is built: a rebuild (only if it goes missing) downloads the sdist again
    shutil.rmtree(cache / "sdist", ignore_errors=True)


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
        with _step(f"compiling the probe ({PROBE_SOURCE.name}) against llama.cpp"):
            _run(cmd)
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, final)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _remove_leftovers(cache: Path) -> None:
    """Temp dirs of builds killed mid-way (SIGKILL skips `finally`); safe: we hold the build lock."""
    for pattern in (".build-*", ".sdist-*", ".stale-*", ".mtmd-*", "oracle/.probe-*", "oracle/.vision-probe-*"):
        for leftover in cache.glob(pattern):
            log(f"removing leftover {leftover}")
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def ensure_oracle() -> Oracle:
    """Return the oracle binaries, building whatever is missing (minutes the first time).

    Concurrent sessions and xdist workers serialise on a lock: one builds (and logs its
    progress), the others say once that they wait, then find the finished build.
    """
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    llama_root = cache / SDIST_DIR / SDIST_DIR_TO_LLAMA
    fit_params = llama_root / "BUILD" / "bin" / "llama-fit-params"
    pruned = llama_root / "BUILD" / PRUNED_MARKER
    probe_key = hashlib.sha256(PROBE_SOURCE.read_bytes()).hexdigest()[:12]
    probe = cache / "oracle" / f"vramgate-probe-{probe_key}"
    if fit_params.exists() and probe.exists() and pruned.exists():
        return Oracle(llama_root, fit_params, probe)
    lock = cache / ".oracle-build.lock"
    with file_lock(lock, f"another process is building the llama.cpp oracle (lock {lock}); waiting for it"):
        if not (fit_params.exists() and probe.exists()):
            began = time.monotonic()
            (cache / "oracle-build.log").write_text("")
            log(f"building the llama.cpp oracle into {cache} (once; later runs reuse it)")
            _remove_leftovers(cache)
            if not fit_params.exists():
                _build_llama_cpp(cache, llama_root)
            if not probe.exists():
                _build_probe(llama_root, probe)
            log(f"oracle ready in {_clock(time.monotonic() - began)}")
        if not pruned.exists():  # a tree built before pruning existed: prune it in place
            _prune(cache / SDIST_DIR)
            shutil.rmtree(cache / "sdist", ignore_errors=True)
    return Oracle(llama_root, fit_params, probe)


def _ensure_mtmd_sources(cache: Path, llama_root: Path) -> None:
    """tools/mtmd's sources in the cached tree; a tree pruned before they were kept gets them from
    the sdist (downloaded again when it is gone: about 75 MB, seconds)."""
    mtmd = llama_root / MTMD_DIR
    if (mtmd / "clip.cpp").exists() and (mtmd / "models" / "models.h").exists():
        return
    sdist = _ensure_sdist(cache)
    tmp = Path(tempfile.mkdtemp(prefix=".mtmd-", dir=cache))
    prefix = f"{SDIST_DIR}/{(SDIST_DIR_TO_LLAMA / MTMD_DIR).as_posix()}/"
    try:
        with _step(f"unpacking llama.cpp's {MTMD_DIR.as_posix()} sources from {sdist.name}"):
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers()
                           if m.name.startswith(prefix) and m.name.endswith((".cpp", ".h"))]
                tar.extractall(tmp, members=members, filter="data")
        if mtmd.exists():  # a partial copy: replace it whole
            shutil.rmtree(mtmd)
        mtmd.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / SDIST_DIR / SDIST_DIR_TO_LLAMA / MTMD_DIR, mtmd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(cache / "sdist", ignore_errors=True)


def _ninja_path(path: Path | str) -> str:
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _build_vision_probe(llama_root: Path, final: Path) -> None:
    """probe_vision.cpp (with clip.cpp inside) + the encoder graphs of tools/mtmd/models, linked
    against the static ggml libraries. A generated ninja file compiles them in parallel at -O0:
    the probe only builds and reserves graphs, it never computes (about 1 minute on 2 cores)."""
    _ensure_debian_tools()
    mtmd = llama_root / MTMD_DIR
    include = " ".join(f"-I{_ninja_path(d)}" for d in
                       (mtmd, llama_root / "include", llama_root / "ggml" / "include"))
    libs = " ".join(_ninja_path(lib) for lib in _link_libraries(llama_root))
    jobs = str(max(1, min(os.cpu_count() or 1, 4)))
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".vision-probe-", dir=final.parent))
    try:
        lines = [
            "rule cxx",
            f"  command = g++ -std=c++17 -O0 -w {include} -c $in -o $out",
            "rule link",
            f"  command = g++ $in -o $out {libs} -fopenmp -lpthread",
        ]
        objects = []
        for src in sorted((mtmd / "models").glob("*.cpp")):
            obj = f"models-{src.stem}.o"
            objects.append(obj)
            lines.append(f"build {obj}: cxx {_ninja_path(src)}")
        lines.append(f"build probe.o: cxx {_ninja_path(VISION_PROBE_SOURCE)}")
        lines.append(f"build vision-probe: link probe.o {' '.join(objects)}")
        (work / "build.ninja").write_text("\n".join(lines) + "\n")
        with _step(f"compiling the vision probe ({VISION_PROBE_SOURCE.name}, clip and {len(objects)} "
                   f"encoder graphs of {MTMD_DIR.as_posix()}, {jobs} jobs)"):
            _run(["ninja", "-j", jobs], cwd=work, on_line=_compile_progress(25, "the vision probe"))
        os.replace(work / "vision-probe", final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_vision_probe() -> Path:
    """The vision probe binary, built (with llama.cpp first, when that is missing) once.

    Keyed by probe_vision.cpp's hash like the text probe; shares the build lock and the cache.
    """
    oracle = ensure_oracle()
    cache = cache_dir()
    key = hashlib.sha256(VISION_PROBE_SOURCE.read_bytes()).hexdigest()[:12]
    probe = cache / "oracle" / f"vramgate-vision-probe-{key}"
    if probe.exists():
        return probe
    lock = cache / ".oracle-build.lock"
    with file_lock(lock, f"another process is building the llama.cpp oracle (lock {lock}); waiting for it"):
        if not probe.exists():
            began = time.monotonic()
            _remove_leftovers(cache)
            _ensure_mtmd_sources(cache, oracle.llama_root)
            _build_vision_probe(oracle.llama_root, probe)
            log(f"vision probe ready in {_clock(time.monotonic() - began)}")
    return probe


if __name__ == "__main__":
    oracle = ensure_oracle()
    print(f"llama-fit-params: {oracle.fit_params}")
    print(f"probe:            {oracle.probe}")
    print(f"vision probe:     {ensure_vision_probe()}")
