"""Clocking for the board tops: the PLLs that make the core clock from the board's
oscillator, the ECP5's EHXPLLL (parameters found the way prjtrellis' `ecppll` finds them) and
the iCE40's SB_PLL40 (the way icestorm's `icepll` does)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib.cdc import ResetSynchronizer

from firstspike.errors import FirstSpikeError

log = logging.getLogger(__name__)

# ECP5 sysCLOCK PLL limits (Lattice DS1044; the same as ecppll and LiteX's ECP5PLL), in MHz
F_IN = (8.0, 400.0)
F_OUT = (3.125, 400.0)
F_PFD = (3.125, 400.0)
F_VCO = (400.0, 800.0)
CLKI_DIV = (1, 128)
CLKFB_DIV = (1, 80)  # ecppll's search range (the register allows 128)
CLKOP_DIV = (1, 128)


class ClockError(FirstSpikeError):
    """A core clock the board's PLL cannot make."""


@dataclass(frozen=True)
class PLLParams:
    """One EHXPLLL configuration with FEEDBK_PATH=CLKOP: f_out = f_in * CLKFB_DIV / CLKI_DIV,
    f_vco = f_out * CLKOP_DIV."""

    f_in_hz: float
    requested_hz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int
    clkop_fphase: int = 0

    @property
    def f_pfd_hz(self) -> float:
        return self.f_in_hz / self.clki_div

    @property
    def f_out_hz(self) -> float:
        """The frequency the PLL actually makes (closest to the request)."""
        return self.f_in_hz * self.clkfb_div / self.clki_div

    @property
    def f_vco_hz(self) -> float:
        return self.f_out_hz * self.clkop_div

    def as_dict(self) -> dict:
        return {"CLKI_DIV": self.clki_div, "CLKFB_DIV": self.clkfb_div, "CLKOP_DIV": self.clkop_div,
                "CLKOP_CPHASE": self.clkop_cphase, "CLKOP_FPHASE": self.clkop_fphase,
                "f_in_mhz": self.f_in_hz / 1e6, "f_out_mhz": round(self.f_out_hz / 1e6, 6),
                "f_pfd_mhz": round(self.f_pfd_hz / 1e6, 6), "f_vco_mhz": round(self.f_vco_hz / 1e6, 6)}  # fmt: skip


def _close_enough(p, family: str, tolerance: float):
    """``p`` (PLLParams or ICE40PLLParams) if its output is within ``tolerance`` of the request."""
    err = abs(p.f_out_hz - p.requested_hz) / p.requested_hz
    if err > tolerance:
        got = f"{p.f_out_hz / 1e6:.4g}"
        raise ClockError(f"the {family} PLL cannot make {p.requested_hz / 1e6:g} MHz from {p.f_in_hz / 1e6:g} MHz "
                         f"(closest: {got} MHz, {100 * err:.1f}% off): ask for {got} MHz")  # fmt: skip
    return p


def ecp5_pll(f_in_hz: float, f_out_hz: float, tolerance: float = 0.1) -> PLLParams:
    """EHXPLLL dividers for ``f_in_hz`` -> the closest achievable output to ``f_out_hz``
    (ties: VCO closest to 600 MHz, as ecppll). Raise ClockError when the input or output is
    outside the PLL's range or the closest output is more than ``tolerance`` (relative) off."""
    fin, want = f_in_hz / 1e6, f_out_hz / 1e6
    if not F_IN[0] <= fin <= F_IN[1]:
        raise ClockError(f"the ECP5 PLL takes {F_IN[0]:g}-{F_IN[1]:g} MHz in, not {fin:g} MHz")
    if not F_OUT[0] <= want <= F_OUT[1]:
        raise ClockError(f"the ECP5 PLL makes {F_OUT[0]:g}-{F_OUT[1]:g} MHz, not {want:g} MHz: "
                         f"choose a core clock in that range")  # fmt: skip
    best: tuple | None = None
    for ref in range(CLKI_DIV[0], CLKI_DIV[1] + 1):
        pfd = fin / ref
        if not F_PFD[0] <= pfd <= F_PFD[1]:
            continue
        for fb in range(CLKFB_DIV[0], CLKFB_DIV[1] + 1):
            out = pfd * fb
            if out > F_OUT[1]:
                break
            # output dividers that keep the VCO in range; ecppll's tie-break: VCO closest to 600 MHz
            lo = max(CLKOP_DIV[0], math.ceil(F_VCO[0] / out - 1e-9))
            hi = min(CLKOP_DIV[1], math.floor(F_VCO[1] / out + 1e-9))
            if lo > hi:
                continue
            op = min(range(lo, hi + 1), key=lambda d: abs(out * d - 600.0))
            key = (round(abs(out - want), 9), round(abs(out * op - 600.0), 9))
            if best is None or key < best[0]:
                best = (key, ref, fb, op)
    if best is None:  # not reachable for inputs within F_IN, kept for safety
        raise ClockError(f"no ECP5 PLL configuration makes {want:g} MHz from {fin:g} MHz")
    _, ref, fb, op = best
    p = PLLParams(f_in_hz, f_out_hz, ref, fb, op, clkop_cphase=op // 2)  # ecppll: CLKOP shifted by 180 degrees
    return _close_enough(p, "ECP5", tolerance)


class ECP5PLL(Elaboratable):
    """EHXPLLL from ``clk_in`` (the board's oscillator after its input buffer) driving the clock
    of ``domain`` from CLKOP (fed back through CLKFB); the domain's reset is held until the PLL
    locks. The parent defines the domain (``m.domains.sync = ClockDomain()``). With a platform,
    CLKOP gets a clock constraint at the achieved frequency (nextpnr derives the same from the
    input pin's constraint and the dividers)."""

    def __init__(self, params: PLLParams, domain: str = "sync"):
        self.params = params
        self.domain = domain
        self.clk_in = Signal()
        self.locked = Signal()

    def elaborate(self, platform) -> Module:
        p = self.params
        m = Module()
        clkop = Signal(attrs={"keep": 1})  # keeps its name through synthesis for the LPF clock constraint
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{p.f_in_hz / 1e6:.6g}",
            a_FREQUENCY_PIN_CLKOP=f"{p.f_out_hz / 1e6:.6g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED", p_DPHASE_SOURCE="DISABLED",
            p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB", p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=p.clki_div, p_CLKFB_DIV=p.clkfb_div, p_FEEDBK_PATH="CLKOP",
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
            p_CLKOP_CPHASE=p.clkop_cphase, p_CLKOP_FPHASE=p.clkop_fphase,
            i_CLKI=self.clk_in, i_CLKFB=clkop, o_CLKOP=clkop, o_LOCK=self.locked,
            i_RST=Const(0), i_STDBY=Const(0), i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1),
            i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0),
        )  # fmt: skip
        m.d.comb += ClockSignal(self.domain).eq(clkop)
        m.submodules.rst_sync = ResetSynchronizer(~self.locked, domain=self.domain)
        if platform is not None:
            platform.add_clock_constraint(clkop, p.f_out_hz)
        log.debug("EHXPLLL %s", p.as_dict())
        return m


# iCE40 PLL limits (Lattice TN1251 / icepll), in MHz
ICE40_F_IN = (10.0, 133.0)
ICE40_F_PFD = (10.0, 133.0)
ICE40_F_VCO = (533.0, 1066.0)
ICE40_F_OUT = (16.0, 275.0)


@dataclass(frozen=True)
class ICE40PLLParams:
    """One SB_PLL40 configuration (FEEDBACK_PATH SIMPLE): f_out = f_in * (DIVF + 1) /
    ((DIVR + 1) * 2^DIVQ), f_vco = f_out * 2^DIVQ."""

    f_in_hz: float
    requested_hz: float
    divr: int
    divf: int
    divq: int

    @property
    def f_pfd_hz(self) -> float:
        return self.f_in_hz / (self.divr + 1)

    @property
    def f_vco_hz(self) -> float:
        return self.f_pfd_hz * (self.divf + 1)

    @property
    def f_out_hz(self) -> float:
        return self.f_vco_hz / (1 << self.divq)

    @property
    def filter_range(self) -> int:
        """icepll's loop filter setting for the PFD frequency."""
        pfd = self.f_pfd_hz / 1e6
        return 1 + sum(pfd >= lim for lim in (17, 26, 44, 66, 101))

    def as_dict(self) -> dict:
        return {"DIVR": self.divr, "DIVF": self.divf, "DIVQ": self.divq, "FILTER_RANGE": self.filter_range,
                "f_in_mhz": self.f_in_hz / 1e6, "f_out_mhz": round(self.f_out_hz / 1e6, 6),
                "f_pfd_mhz": round(self.f_pfd_hz / 1e6, 6), "f_vco_mhz": round(self.f_vco_hz / 1e6, 6)}  # fmt: skip


def ice40_pll(f_in_hz: float, f_out_hz: float, tolerance: float = 0.1) -> ICE40PLLParams:
    """SB_PLL40 dividers for ``f_in_hz`` -> the closest achievable output to ``f_out_hz``, as
    icepll searches them (DIVR 0-15, DIVF 0-127, DIVQ 1-6). Raise ClockError outside the
    PLL's range or when the closest output is more than ``tolerance`` (relative) off."""
    fin, want = f_in_hz / 1e6, f_out_hz / 1e6
    if not ICE40_F_IN[0] <= fin <= ICE40_F_IN[1]:
        raise ClockError(f"the iCE40 PLL takes {ICE40_F_IN[0]:g}-{ICE40_F_IN[1]:g} MHz in, not {fin:g} MHz")
    if not ICE40_F_OUT[0] <= want <= ICE40_F_OUT[1]:
        raise ClockError(f"the iCE40 PLL makes {ICE40_F_OUT[0]:g}-{ICE40_F_OUT[1]:g} MHz, not {want:g} MHz: "
                         "choose a core clock in that range (or the board clock itself)")  # fmt: skip
    best: tuple | None = None
    for divr in range(16):
        pfd = fin / (divr + 1)
        if not ICE40_F_PFD[0] <= pfd <= ICE40_F_PFD[1]:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not ICE40_F_VCO[0] <= vco <= ICE40_F_VCO[1]:
                continue
            for divq in range(1, 7):
                out = vco / (1 << divq)
                if ICE40_F_OUT[0] <= out <= ICE40_F_OUT[1] and (best is None or abs(out - want) < best[0] - 1e-12):
                    best = (abs(out - want), divr, divf, divq)
    if best is None:
        raise ClockError(f"no iCE40 PLL configuration makes {want:g} MHz from {fin:g} MHz")
    return _close_enough(ICE40PLLParams(f_in_hz, f_out_hz, *best[1:]), "iCE40", tolerance)


class ICE40PLL(Elaboratable):
    """SB_PLL40_PAD on the board's clock pin (``pin``: the raw port, no input buffer) driving
    ``domain``; the domain's reset is held until the PLL locks and then for a while longer (the
    iCE40's block RAMs read zeros for about 3 us after configuration)."""

    def __init__(self, params: ICE40PLLParams, pin, domain: str = "sync"):
        self.params = params
        self.pin = pin
        self.domain = domain
        self.locked = Signal()

    def elaborate(self, platform) -> Module:
        p = self.params
        m = Module()
        clk = Signal(name="pllout", attrs={"keep": 1})
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_DIVR=p.divr, p_DIVF=p.divf, p_DIVQ=p.divq, p_FILTER_RANGE=p.filter_range,
            io_PACKAGEPIN=self.pin, o_PLLOUTGLOBAL=clk, o_LOCK=self.locked,
            i_RESETB=Const(1), i_BYPASS=Const(0),
        )  # fmt: skip
        m.d.comb += ClockSignal(self.domain).eq(clk)
        # reset: until lock, then 8 us more at the PLL's clock (the BRAM power-up delay, 2.5x margin)
        delay = int(8e-6 * p.f_out_hz)
        timer = Signal(range(delay + 1))
        ready = Signal()
        m.domains.por = ClockDomain("por", reset_less=True)
        m.d.comb += ClockSignal("por").eq(clk)
        with m.If(~self.locked):
            m.d.por += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == delay):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)
        m.submodules.rst_sync = ResetSynchronizer(~ready, domain=self.domain)
        if platform is not None:
            platform.add_clock_constraint(clk, p.f_out_hz)
        log.debug("SB_PLL40_PAD %s", p.as_dict())
        return m
