"""`firstspike flow`: the whole pipeline as small cached steps over one run folder.

Each step is a function that reads what earlier steps wrote in the run folder and writes
its own sub-folder plus a dict of figures. A step's cache key is the SHA-256 of its name,
its parameters and the content hashes of what the steps it reads wrote (the training step also hashes the
config file and the dataset files), so a step runs again exactly when something it depends
on changed, like a build system. Steps run in a scratch folder that is renamed into place
only when they succeed: a failed or interrupted step leaves nothing half-written.
With ``jobs`` > 1, steps whose inputs are ready run at once in worker processes, longest
first (the two training rungs side by side, then the bitstream build beside the gate-level
and RTL simulations), like ``make -j``; ``jobs`` = 1 runs them one after the other in this process.

    train_real   float real-valued network (the top rung of the report)
    train        binary network (STiDi-BP)
    quantize     model.fsm: the contract between software and hardware
    golden       integer golden model on the test set, checked against the float forward pass
    hw           Verilog of the core (Amaranth)
    verilator    RTL against the golden model, every layer's spike times (Verilator)
    icarus       the same on Icarus
    gate_level   Yosys netlist of each built board's FPGA family (block RAM models included), simulated
    build        bitstream for each board (YoWASP), utilisation and Fmax
    virtual      the virtual board (UART included) driven by the host runtime
    board        a real board on --port, when one is attached
    report       report.md and report.html (firstspike.report)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from firstspike.errors import FirstSpikeError

log = logging.getLogger(__name__)
FLOW_VERSION = 1
STATE = "flow.json"


class FlowError(FirstSpikeError):
    """A flow that cannot run as asked (unknown step, missing input of a skipped step)."""


@dataclass
class FlowConfig:
    """Everything that decides what the flow computes (each step hashes the fields it reads)."""

    out: str = "runs/flow"
    config: str = "csnn_ice40"  # architecture (built-in name or TOML path)
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int | None = None  # binary training epochs (None: the config's, 30 for csnn_ice40)
    refit_epochs: int | None = None  # then the output refit's epochs (None: the config's, 3 for csnn_ice40; 0: none)
    lr: float | None = None  # None: the config's
    # float real-valued rung (0: skip the step): csnn_ice40's real-valued recipe reaches 93.96%
    # in 4 epochs (the binary network 97.62% in 30 + 3 refit epochs; docs/accuracy.md)
    real_epochs: int = 4
    train_subset: int = 0  # 0: all training images
    test_subset: int = 0  # 0: all test images (golden model, float accuracy)
    seed: int = 0
    lanes: int = 2  # core lanes: RTL simulation and bitstreams
    verilator_images: int = 200
    icarus_images: int = 2
    gate_images: int = 1
    gate_family: str = "auto"  # auto: the FPGA families of the boards built (ice40 when none); ice40, ecp5 or all
    boards: tuple[str, ...] = ("icebreaker",)
    virtual_images: int = 20
    port: str | None = None  # a real board's serial port
    port_images: int = 100
    jobs: int = 2  # steps run at once (worker processes), and parallel simulations within a step
    progress: bool = True


@dataclass
class Step:
    name: str
    deps: tuple[str, ...]
    params: Callable[[FlowConfig], dict[str, Any]]
    run: Callable[["Context"], dict[str, Any]]
    doc: str = ""
    enabled: Callable[[FlowConfig], bool] = lambda c: True
    cost: int = 1  # rough relative run time: of the steps ready at once, the costliest start first


@dataclass
class Context:
    cfg: FlowConfig
    root: Path
    work: Path  # this step's scratch folder (becomes root/<step>)
    state: dict[str, Any] = field(default_factory=dict)

    def path(self, step: str, name: str) -> Path:
        """A file written by an earlier step."""
        p = self.root / step / name
        if not p.exists():
            raise FlowError(f"{p} is missing: run the step {step!r} (without --skip {step})")
        return p

    def metrics(self, step: str) -> dict[str, Any]:
        s = self.state.get("steps", {}).get(step)
        if not s:
            raise FlowError(f"step {step!r} has not run: run it (without --skip {step})")
        return s["metrics"]

    def tables(self):
        from firstspike.quantize.modelfile import load

        return load(self.path("quantize", "model.fsm"))

    def test_split(self):
        from firstspike.data import load_split

        return load_split(self.cfg.dataset, "test", self.cfg.data_dir).head(self.cfg.test_subset)


# --- the steps -------------------------------------------------------------------------------
def _train(ctx: Context, mode: str, epochs: int | None, refit_epochs: int | None = None) -> dict[str, Any]:
    from firstspike.train.model import load_config
    from firstspike.train.trainer import TrainConfig, train

    c = ctx.cfg
    net, ttab = load_config(c.config)
    net.mode = mode
    net.validate()
    tc = TrainConfig.from_dict(ttab, mode)
    tc.dataset, tc.data_dir, tc.seed = c.dataset, c.data_dir, c.seed
    if epochs is not None:
        tc.epochs = epochs
    if refit_epochs is not None:  # (the float rung passes none: real mode skips the refit)
        tc = tc.with_refit_epochs(refit_epochs)
    tc.train_subset, tc.test_subset, tc.progress = c.train_subset, c.test_subset, c.progress
    if c.lr is not None:
        tc.lr = c.lr
    ck = train(net, tc, ctx.work, resume=False)
    return {"float_accuracy": float(ck["test_acc"]), "epochs": int(ck["epoch"]), "mode": mode,
            "history": [{k: h[k] for k in ("epoch", "train_acc", "test_acc", "seconds") if k in h} for h in ck.get("history", [])]}  # fmt: skip


def _train_params(c: FlowConfig, epochs: int | None, **extra: Any) -> dict[str, Any]:
    from firstspike.data import resolve_dir

    cfg_path = Path(c.config)
    if not cfg_path.exists():
        cfg_path = Path(__file__).resolve().parent.parent / "train" / "configs" / f"{c.config}.toml"
    folder = resolve_dir(c.dataset, c.data_dir)
    data = sorted((p.name, _file_hash(p)) for p in folder.iterdir() if p.is_file() and "ubyte" in p.name)
    return {"config": c.config, "config_sha": _file_hash(cfg_path) if cfg_path.exists() else None, "data": data,
            "epochs": epochs, "lr": c.lr, "train_subset": c.train_subset, "test_subset": c.test_subset, "seed": c.seed, **extra}  # fmt: skip


def step_train_real(ctx: Context) -> dict[str, Any]:
    return _train(ctx, "real", ctx.cfg.real_epochs)


def step_train(ctx: Context) -> dict[str, Any]:
    return _train(ctx, "binary", ctx.cfg.epochs, ctx.cfg.refit_epochs)


def step_quantize(ctx: Context) -> dict[str, Any]:
    from firstspike.quantize.export import quantize_checkpoint
    from firstspike.quantize.modelfile import save, tables_sha256

    tables, _ = quantize_checkpoint(ctx.path("train", "checkpoint.pt"))
    save(tables, ctx.work / "model.fsm")
    return {"model_sha256": tables_sha256(tables), "T": tables.T, "layers": [ly.kind for ly in tables.layers]}


def step_golden(ctx: Context) -> dict[str, Any]:
    """Golden model on the test set; every layer's spike times against the float forward
    pass of the checkpoint; work per image (synaptic events) from the core's plan."""
    import torch

    from firstspike.hw.plan import plan_core
    from firstspike.quantize.golden import GoldenModel
    from firstspike.train.trainer import load_checkpoint, model_from_checkpoint

    tables = ctx.tables()
    test = ctx.test_split()
    t0 = time.perf_counter()
    g = GoldenModel(tables).run(test.images, progress=ctx.cfg.progress)
    golden_s = time.perf_counter() - t0
    model = model_from_checkpoint(load_checkpoint(ctx.path("train", "checkpoint.pt")))
    model.eval()
    spike_mm, cls_mm, compared = 0, 0, 0
    x = torch.from_numpy(test.images.copy())
    for i in range(0, len(x), 500):
        cls, outs = model.classify(x[i : i + 500])
        cls_mm += int((cls.numpy() != g.classes[i : i + 500]).sum())
        for o, want in zip(outs, g.layer_times):
            w = want[i : i + 500]
            spike_mm += int((o.numpy().astype(np.int64) != w).sum())
            compared += w.size
    work = plan_core(tables, lanes=ctx.cfg.lanes, debug=False).work(g.layer_times)
    out_t = g.layer_times[-1].reshape(len(test), -1)
    np.savez_compressed(ctx.work / "golden.npz", classes=g.classes, labels=test.labels, out_times=out_t, v_last=g.v_last,
                        synaptic_updates=work["synaptic_updates"], neuron_updates=work["neuron_updates"],
                        cycle_bound=work["cycle_bound_concurrent"])  # fmt: skip
    # one image's spike times of every layer, for the raster plot
    np.savez_compressed(ctx.work / "raster.npz", label=test.labels[0], **{f"t{k}": t[0] for k, t in enumerate(g.layer_times)})
    return {"accuracy": float((g.classes == test.labels).mean()), "images": len(test), "seconds": round(golden_s, 2),
            "float_class_mismatches": cls_mm, "float_spike_mismatches": spike_mm, "float_values_compared": compared,
            "synaptic_updates_mean": float(work["synaptic_updates"].mean()),
            "neuron_updates_mean": float(work["neuron_updates"].mean())}  # fmt: skip


def step_hw(ctx: Context) -> dict[str, Any]:
    from firstspike.hw.generate import generate

    summary = generate(ctx.path("quantize", "model.fsm"), ctx.work, lanes=ctx.cfg.lanes)
    return {"memory_bits": summary["memory_bits"], "lanes": ctx.cfg.lanes}


def _verify(ctx: Context, sim: str, n: int, gate_level: str | None = None) -> dict[str, Any]:
    from firstspike.sim.rtl import verify

    test = ctx.test_split().head(n)
    rep = verify(ctx.tables(), test.images, test.labels, sim=sim, jobs=ctx.cfg.jobs, lanes=ctx.cfg.lanes,
                 build_root=ctx.root / ".cache" / "sim", progress=ctx.cfg.progress, gate_level=gate_level)  # fmt: skip
    np.save(ctx.work / "cycles.npy", rep.cycles)
    d = rep.as_dict()
    d["total_mismatches"] = rep.total_mismatches
    if rep.total_mismatches:
        log.error("%s: %d mismatches against the golden model", sim, rep.total_mismatches)
    return d


def step_verilator(ctx: Context) -> dict[str, Any]:
    return _verify(ctx, "verilator", ctx.cfg.verilator_images)


def step_icarus(ctx: Context) -> dict[str, Any]:
    return _verify(ctx, "icarus", ctx.cfg.icarus_images)


def gate_families(cfg: FlowConfig) -> list[str]:
    """The FPGA families whose Yosys netlists the gate-level step simulates."""
    from firstspike.boards.build import BOARDS
    from firstspike.sim.rtl import GATE_LEVEL

    if cfg.gate_family == "all":
        return list(GATE_LEVEL)
    if cfg.gate_family != "auto":
        if cfg.gate_family not in GATE_LEVEL:
            raise FlowError(f"unknown --gate-family {cfg.gate_family!r}: choose auto, all or {', '.join(GATE_LEVEL)}")
        return [cfg.gate_family]
    fams = [BOARDS[b].family for b in cfg.boards if b in BOARDS]
    return sorted(set(fams), key=list(GATE_LEVEL).index) or ["ice40"]


def step_gate_level(ctx: Context) -> dict[str, Any]:
    """Each family's netlist against the golden model (the families of the boards built)."""
    fams = {f: _verify(ctx, "verilator", ctx.cfg.gate_images, gate_level=f) for f in gate_families(ctx.cfg)}
    return {"families": fams, "total_mismatches": sum(v["total_mismatches"] for v in fams.values()),
            "values_compared": sum(v["values_compared"] for v in fams.values()), "images": ctx.cfg.gate_images}


def step_build(ctx: Context) -> dict[str, Any]:
    from firstspike.boards.build import BuildError, build

    out = {}
    for b in ctx.cfg.boards:
        try:
            r = build(ctx.tables(), b, ctx.work, lanes=ctx.cfg.lanes)
        except BuildError as e:  # one board that does not fit is a result, not the end of the flow
            log.error("%s", e)
            r = {"board": b, "error": str(e)}
        out[b] = r
    return {"boards": out}


def _board_run(ctx: Context, port: str, n: int) -> dict[str, Any]:
    from firstspike.boards.runtime import BoardRuntime
    from firstspike.quantize.golden import GoldenModel
    from firstspike.quantize.modelfile import tables_sha256
    from firstspike.sim.vectors import compare_streams, expected

    tables = ctx.tables()
    test = ctx.test_split().head(n)
    with BoardRuntime(port, timeout=30.0) as rt:
        rt.check_model(tables_sha256(tables))
        res = rt.run(test.images, progress=ctx.cfg.progress, tables=tables)  # compact frames where the board has them
        spikes = None
        info = rt.info()
        # plain requests stop at the first output spike: INFO says so (flags bit 2); bitstreams built
        # before that flag exited early only without the spike readout
        early = bool(info["early_exit"] or not info["spikes"])
        if info["spikes"]:
            spk = rt.run(test.images[:1], spikes=True, tables=tables)
            spikes = compare_streams(tables, spk.stream, expected(tables, test.images[:1]).stream)
    gold = GoldenModel(tables).classify(test.images)
    return {"images": n, "accuracy": float((res.classes == test.labels).mean()),
            "golden_accuracy": float((gold == test.labels).mean()), "class_mismatches": int((res.classes != gold).sum()),
            "spike_mismatches_one_image": spikes, "retries": res.retries, "errors": res.errors,
            "cycles_mean": float(res.cycles.mean()), "early_exit": early}  # fmt: skip


def step_virtual(ctx: Context) -> dict[str, Any]:
    from firstspike.boards.virtual import VirtualBoard

    with VirtualBoard(ctx.tables(), lanes=ctx.cfg.lanes, build_root=ctx.root / ".cache" / "virtual") as vb:
        return _board_run(ctx, vb.port, ctx.cfg.virtual_images)


def step_board(ctx: Context) -> dict[str, Any]:
    assert ctx.cfg.port
    return {"port": ctx.cfg.port, **_board_run(ctx, ctx.cfg.port, ctx.cfg.port_images)}


def step_report(ctx: Context) -> dict[str, Any]:
    from firstspike.report import write_report

    paths = write_report(ctx.root, ctx.work, state=ctx.state)
    return {"files": [str(p.relative_to(ctx.work)) for p in paths]}


def _p(*names: str) -> Callable[[FlowConfig], dict[str, Any]]:
    return lambda c: {n: getattr(c, n) for n in names}


STEPS: list[Step] = [
    Step("train_real", (), lambda c: _train_params(c, c.real_epochs), step_train_real, "float real-valued network",
         lambda c: c.real_epochs > 0, cost=30),
    Step("train", (), lambda c: _train_params(c, c.epochs, **({"refit_epochs": c.refit_epochs} if c.refit_epochs is not None else {})), step_train, "binary network, STiDi-BP", cost=100),
    Step("quantize", ("train",), _p(), step_quantize, "model file"),
    Step("golden", ("quantize",), _p("test_subset", "lanes"), step_golden, "integer golden model", cost=2),
    Step("hw", ("quantize",), _p("lanes"), step_hw, "Verilog of the core"),
    Step("verilator", ("quantize",), _p("verilator_images", "lanes", "test_subset"), step_verilator, "RTL on Verilator",
         lambda c: c.verilator_images > 0, cost=4),
    Step("icarus", ("quantize",), _p("icarus_images", "lanes", "test_subset"), step_icarus, "RTL on Icarus",
         lambda c: c.icarus_images > 0),
    Step("gate_level", ("quantize",), lambda c: {**_p("gate_images", "lanes", "test_subset")(c), "families": gate_families(c)},
         step_gate_level,
         "Yosys netlist on Verilator", lambda c: c.gate_images > 0, cost=10),
    Step("build", ("quantize",), _p("boards", "lanes"), step_build, "bitstreams", lambda c: bool(c.boards), cost=10),
    Step("virtual", ("quantize",), _p("virtual_images", "lanes", "test_subset"), step_virtual, "virtual board",
         lambda c: c.virtual_images > 0, cost=4),
    Step("board", ("quantize",), _p("port", "port_images", "test_subset"), step_board, "real board", lambda c: bool(c.port), cost=4),
]  # fmt: skip
REPORT = Step("report", (), _p(), step_report, "report.md + report.html")
STEP_NAMES = [s.name for s in STEPS] + [REPORT.name]


def _file_hash(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _moved(metrics: dict[str, Any], work: Path, dest: Path) -> dict[str, Any]:
    """Paths a step recorded inside its scratch folder, and its JSON files, point to where
    the folder now is."""
    old, new = str(work), str(dest)
    for p in dest.rglob("*.json"):
        text = p.read_text()
        if old in text:
            p.write_text(text.replace(old, new))
    return json.loads(json.dumps(metrics, default=_json_default).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))


def _folder_hash(folder: Path) -> str:
    """Content hash of what a step wrote (what the steps after it depend on)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(folder)}\0{_file_hash(p)}\0".encode())
    return h.hexdigest()


def _key(step: Step, cfg: FlowConfig, content: dict[str, str | None]) -> str:
    """The step's parameters and the content of the steps it reads."""
    blob = json.dumps({"flow": FLOW_VERSION, "step": step.name, "params": step.params(cfg),
                       "deps": {d: content.get(d) for d in step.deps}}, sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


def load_state(root: Path) -> dict[str, Any]:
    p = root / STATE
    if p.exists():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            log.warning("%s is corrupt: every step runs again", p)
    return {"steps": {}}


def _save_state(root: Path, state: dict[str, Any]) -> None:
    from firstspike.files import atomic_write

    atomic_write(root / STATE, json.dumps(state, indent=1, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


class _Inline:
    """The executor of ``jobs`` = 1: each step runs at once in this process."""

    slots = 1

    def submit(self, step: Step, ctx: Context) -> Future:
        f: Future = Future()
        try:
            f.set_result(step.run(ctx))
        except BaseException as e:  # (re-raised by the scheduler, after the step's cleanup)
            f.set_exception(e)
        return f

    def shutdown(self) -> None:
        pass


def _worker_init(log_queue: Any, level: int, threads: int) -> None:
    """A step worker: its log records go to the flow's handlers (console filter and
    flow.log) through ``log_queue``; its numeric libraries use ``threads`` threads, so
    steps running side by side do not oversubscribe the cores."""
    import logging.handlers

    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(level)


def _run_in_worker(name: str, ctx: Context) -> dict[str, Any]:
    return next(s for s in [*STEPS, REPORT] if s.name == name).run(ctx)


class _Workers:
    """The executor of ``jobs`` > 1: a pool of ``jobs`` worker processes (spawned: the
    numeric libraries' thread pools are not fork-safe), their logging relayed here."""

    def __init__(self, jobs: int) -> None:
        import logging.handlers
        import multiprocessing

        mp = multiprocessing.get_context("spawn")
        self.slots = jobs
        self.queue = mp.Queue()
        root = logging.getLogger()
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self.pool = ProcessPoolExecutor(jobs, mp_context=mp, initializer=_worker_init,
                                        initargs=(self.queue, root.getEffectiveLevel(), threads))  # fmt: skip
        self.listener = logging.handlers.QueueListener(self.queue, *root.handlers, respect_handler_level=True)
        self.listener.start()

    def submit(self, step: Step, ctx: Context) -> Future:
        return self.pool.submit(_run_in_worker, step.name, ctx)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.listener.stop()
        self.queue.close()


def _executor(jobs: int) -> _Inline | _Workers:
    """Worker processes for ``jobs`` > 1; this process where there is one job, or where
    worker processes cannot start (no shared memory for their queue, say)."""
    if jobs > 1:
        try:
            return _Workers(jobs)
        except OSError as e:
            log.warning("cannot start %d worker processes (%s): the steps run one after the other", jobs, e)
    return _Inline()


HARDWARE_STEPS = ("hw", "verilator", "icarus", "gate_level", "build", "virtual", "board")  # the steps that need the core


def _check_deployable(cfg: FlowConfig, hardware: list[str]) -> None:
    """Before anything trains: the architecture must be one the model file can carry, and the
    core, if one of the ``hardware`` steps is to run."""
    from firstspike.quantize.export import check_deployable
    from firstspike.train.model import load_config

    net, _ = load_config(cfg.config)
    check_deployable(net)


def run_flow(cfg: FlowConfig, skip: tuple[str, ...] = (), rerun: tuple[str, ...] = (), only: tuple[str, ...] = ()
             ) -> dict[str, Any]:  # fmt: skip
    """Run (or reuse) every enabled step, each once the steps it reads are done (``cfg.jobs``
    at once, costliest first), the report last; returns the state (per step: status, key,
    seconds, metrics). ``skip``: steps not to run; ``rerun``: steps to run even if cached;
    ``only``: run just these (their inputs must exist). A failed step leaves nothing behind;
    the steps running beside it finish and are kept, none starts after it, and its error is raised."""
    for n in (*skip, *rerun, *only):
        if n not in STEP_NAMES:
            raise FlowError(f"unknown step {n!r}: the steps are {', '.join(STEP_NAMES)}")
    if cfg.jobs < 1:
        raise FlowError(f"jobs={cfg.jobs}: run at least one step at a time (--jobs 1 or more)")
    if "quantize" not in skip and (not only or "quantize" in only):
        hardware = [s.name for s in STEPS if s.name in HARDWARE_STEPS and s.enabled(cfg) and s.name not in skip
                    and (not only or s.name in only)]  # fmt: skip
        _check_deployable(cfg, hardware)
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    state = load_state(root)
    state["config"] = dataclasses.asdict(cfg)
    content = {n: s.get("content") for n, s in state["steps"].items()}
    resolved = {s.name for s in STEPS if not s.enabled(cfg)}
    for n in resolved:
        state["steps"].pop(n, None)
    report = dataclasses.replace(REPORT, deps=tuple(s.name for s in STEPS), cost=0)  # after every other step
    todo = sorted((s for s in [*STEPS, report] if s.name not in resolved), key=lambda s: -s.cost)  # (stable)
    running: dict[Future, tuple[Step, str, Path, float, bool]] = {}
    error: BaseException | None = None
    t_origin = time.perf_counter()
    executor: _Inline | _Workers | None = None
    try:
        while todo or running:
            progressed = error is None  # (a step resolved at once may make others ready)
            while progressed:
                progressed = False
                for step in [s for s in todo if all(d in resolved for d in s.deps)]:
                    rec = state["steps"].get(step.name, {})
                    passed_over = step.name in skip or (only and step.name not in only)
                    key = "" if passed_over else _key(step, cfg, content)
                    cached = step is not report and step.name not in rerun and rec.get("key") == key and (root / step.name).is_dir()
                    if passed_over or cached:
                        if cached:
                            rec["status"] = "cached"
                            log.info("%-10s cached (%s)", step.name, key[:12])
                        elif rec:
                            rec["status"] = "skipped" if step.name in skip else "kept"
                        resolved.add(step.name)
                    else:
                        if executor is None:
                            executor = _executor(cfg.jobs)
                        if len(running) >= executor.slots:
                            continue  # (a later ready step may still be cached)
                        work = root / f".{step.name}.partial"
                        shutil.rmtree(work, ignore_errors=True)
                        work.mkdir(parents=True)
                        bar = cfg.progress and not any(r[4] for r in running.values())  # one progress bar at a time
                        snapshot = json.loads(json.dumps(state, default=_json_default))
                        log.info("%-10s running: %s", step.name, step.doc)
                        t0 = time.perf_counter()
                        running[executor.submit(step, Context(dataclasses.replace(cfg, progress=bar), root, work, snapshot))] = (
                            step, key, work, t0, bar)  # fmt: skip
                    todo.remove(step)
                    progressed = True
                    break
            if not running:
                if error is not None or not todo:
                    break
                raise FlowError(f"steps {[s.name for s in todo]} wait for steps that never run")  # (a bug in STEPS)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                step, key, work, t0, _ = running.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    shutil.rmtree(work, ignore_errors=True)
                    if isinstance(exc, BrokenProcessPool):
                        exc = FlowError(f"step {step.name!r}: its worker process died (out of memory?); run it again with --jobs 1")
                    if error is not None:
                        log.error("%s failed too: %s", step.name, exc)
                    error = error or exc
                    continue
                dest = root / step.name
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(work, dest)
                content[step.name] = _folder_hash(dest)
                resolved.add(step.name)
                state["steps"][step.name] = {"status": "ran", "key": key, "content": content[step.name],
                                             "seconds": round(time.perf_counter() - t0, 1), "started_s": round(t0 - t_origin, 1),
                                             "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                             "metrics": _moved(fut.result(), work, dest)}  # fmt: skip
                _save_state(root, state)
    finally:  # (interrupted: no scratch folder stays)
        if executor is not None:
            executor.shutdown()
        for _, _, work, _, _ in running.values():
            shutil.rmtree(work, ignore_errors=True)
    _save_state(root, state)
    if error is not None:
        raise error
    return state


def total_mismatches(state: dict[str, Any]) -> int:
    """Every disagreement with the golden model found by any step (0: all rungs exact)."""
    n = 0
    for name, s in state.get("steps", {}).items():
        m = s.get("metrics", {})
        n += int(m.get("total_mismatches", 0))
        n += int(m.get("float_class_mismatches", 0)) + int(m.get("float_spike_mismatches", 0))
        if name in ("virtual", "board"):
            n += int(m.get("class_mismatches", 0)) + sum((m.get("spike_mismatches_one_image") or {}).values())
    return n


def summary_lines(state: dict[str, Any]) -> list[str]:
    """One line per step: status, seconds, when it started (steps that ran in this call), headline figure."""
    out = []
    for name in STEP_NAMES:
        s = state["steps"].get(name)
        if not s:
            continue
        m = s.get("metrics", {})
        head = ""
        if "float_accuracy" in m:
            head = f"float accuracy {100 * m['float_accuracy']:.2f}%"
        elif name == "golden":
            head = (f"accuracy {100 * m['accuracy']:.2f}% on {m['images']} images; float vs golden: "
                    f"{m['float_spike_mismatches']} spike-time mismatches of {m['float_values_compared']:,}")  # fmt: skip
        elif "total_mismatches" in m:
            head = f"{m['total_mismatches']} mismatches of {m['values_compared']:,} values on {m['images']} images"
            if "families" in m:
                head += f" ({', '.join(m['families'])})"
        elif name == "build":
            head = "; ".join(f"{b}: " + (f"Fmax {r['fmax_mhz']} MHz" if "fmax_mhz" in r else "FAILED")
                             for b, r in m["boards"].items())  # fmt: skip
        elif "class_mismatches" in m:
            head = f"{m['class_mismatches']} class mismatches on {m['images']} images, {m['retries']} retries"
        elif name == "report":
            head = ", ".join(m["files"][:2])
        start = f"  from {s['started_s']:>6.1f} s" if s["status"] == "ran" and "started_s" in s else " " * 16
        out.append(f"{name:<11} {s['status']:<8} {s.get('seconds', 0):>7.1f} s{start}  {head}")
    return out
