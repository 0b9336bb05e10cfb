"""Convolutional TTFS network built from an architecture config (TOML).

Layers: ``conv`` (spiking convolution), ``pool`` (min-time pooling), ``fc`` (spiking
fully connected; the last one is the output layer, one neuron per class).
Modes: ``real`` (real-valued weights) and ``binary`` (forward with alpha * sign(w), exact
integers +-1 against integer thresholds ceil(theta / alpha); straight-through backward).
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from firstspike.errors import ConfigError
from firstspike.train.functional import SpikeFire, WindowFire, decide, encode, input_table, min_pool, resolve_backend

log = logging.getLogger(__name__)

MODES = ("binary", "real")  # the weight modes
SILENT_RULES = ("margin", "potential")
OUTPUTS = ("spike", "potential")  # NetConfig.output
WINDOWS = ("off", "psp", "ramp")  # NetConfig.layer_windows  # NetConfig.silent_rule (functional.decide)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class LayerSpec:
    kind: str  # conv | pool | fc
    channels: int = 0  # conv: output channels; fc: units
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    weight_bits: int = 0  # binary mode, conv layers: 0 or 1 = +-1 weights; k >= 2: k-bit integers
    #   (-(2^(k-1)-1)..2^(k-1)-1, e.g. 2 = ternary) times a per-channel scale, exact like the output's


@dataclass
class NetConfig:
    """Architecture and neuron parameters (the [train] table is separate: TrainConfig)."""

    name: str
    T: int = 64
    mode: str = "binary"  # binary | real
    input_shape: tuple[int, int, int] = (1, 28, 28)
    layers: list[LayerSpec] = field(default_factory=list)
    theta: float = 1.0  # threshold in units of T: theta_l = theta * T
    per_channel_alpha: bool = True
    calib_time: float = 0.5  # data-driven init: neurons should cross around this fraction of T
    calib_fire: float = 0.5  # ... for this fraction of (image, neuron) pairs
    out_calib_time: float = 0.75
    clip: bool = True  # binary: clip the straight-through gradient to |w| <= 1
    input_gamma: float = 1.0  # input code t = (1 - (p/255)^gamma) T (1: linear; < 1: dim pixels earlier)
    silent_rule: str = "margin"  # class when no output fires: largest V(T-1) - threshold ("margin"),
    #   or largest V(T-1) ("potential", the rule before 2026-11-29; outputs' thresholds differ by ~10x)
    out_weight_bits: int = 1  # binary mode: weight width of the output layer (1: +-1 like the
    #   hidden layers; k >= 2: integers -(2^(k-1)-1)..2^(k-1)-1 times a per-class scale, exact)
    bias: bool = False  # every spiking layer gets one more input channel that spikes at t = 0 at every
    #   input position (padding silent): a learnt ramp b * t of each neuron's potential (SpikingLayer.layer_input)
    layer_windows: str = "off"  # "psp" | "ramp": every spiking layer fires in a window of its own, after all
    #   spikes of the window before have arrived (functional.WindowFire): no input is lost to an early spike;
    #   "ramp": the slope in the layer's window is a constant ramp (SpikingLayer.ramp), not the inputs'
    #   (a quantised ReLU; STiDi-BP's -1/rho is then the exact derivative). "ramp" deploys (model file
    #   version 2, golden model, core); "psp" is training only
    ramp_pow2: bool = False  # binary "ramp": integer ramps rounded to a power of two (a shift, not a divider, in hardware)
    output: str = "spike"  # "spike": the class is the earliest output spike (silent_rule if none fires);
    #   "potential": the output layer never fires (its exported thresholds lie above any reachable V) and the
    #   class is the largest V(T-1) at the end of its window (model file rule "max-potential"), trained with
    #   cross-entropy on V(T-1) / theta_l (CSNN.logits); binary mode gives the output layer one scale alpha
    #   for all classes, so that the integer potentials the hardware compares rank as the trained logits

    @property
    def decision_rule(self) -> str:
        """The model file's decision (modelfile.DECISIONS key): the silent rule, or "potential" for
        ``output = "potential"`` (no output fires, so the class is always the largest V(T-1))."""
        return "potential" if self.output == "potential" else self.silent_rule

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "NetConfig":
        d = dict(d)
        d.pop("train", None)
        try:
            layers = [LayerSpec(**ly) for ly in d.pop("layers", [])]
            cfg = NetConfig(layers=layers, **d)
        except TypeError as e:
            raise ConfigError(f"bad architecture config: {e}") from e
        cfg.input_shape = tuple(cfg.input_shape)  # type: ignore[assignment]
        cfg.validate()
        return cfg

    def weight_widths(self) -> list[int]:
        """Binary mode: each spiking layer's integer weight width (1: +-1, k: k-bit); real mode: []."""
        if self.mode != "binary":
            return []
        spiking = [ly for ly in self.layers if ly.kind != "pool"]
        return [max(ly.weight_bits, 1) for ly in spiking[:-1]] + [self.out_weight_bits]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) after every layer (may hold non-positive sizes: ``validate`` rejects them)."""
        c, h, w = self.input_shape
        out = []
        for i, ly in enumerate(self.layers):
            if ly.kind == "conv":
                h = (h + 2 * ly.padding - ly.kernel) // ly.stride + 1
                w = (w + 2 * ly.padding - ly.kernel) // ly.stride + 1
                c = ly.channels
            elif ly.kind == "pool":
                h, w = h // max(ly.kernel, 1), w // max(ly.kernel, 1)
            elif ly.kind == "fc":
                c, h, w = ly.channels, 1, 1
            else:
                raise ConfigError(f"layer {i}: unknown kind {ly.kind!r} (conv, pool, fc)")
            out.append((c, h, w))
        return out

    def validate(self) -> None:
        if not 0.0 < self.input_gamma <= 4.0:
            raise ConfigError(f"input_gamma={self.input_gamma}: choose a value in (0, 4] (1: linear)")
        if self.layer_windows not in WINDOWS:
            raise ConfigError(f"layer_windows={self.layer_windows!r}: choose one of {WINDOWS}")
        if self.silent_rule not in SILENT_RULES:
            raise ConfigError(f"silent_rule={self.silent_rule!r}: choose one of {SILENT_RULES}")
        if self.output not in OUTPUTS:
            raise ConfigError(f"output={self.output!r}: choose one of {OUTPUTS}")
        if not 1 <= self.out_weight_bits <= 8:
            raise ConfigError(f"out_weight_bits={self.out_weight_bits}: choose 1 (binary) .. 8")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be 'binary' or 'real', not {self.mode!r}")
        if not (2 <= self.T <= 4096):
            raise ConfigError(f"T={self.T} out of range 2..4096")
        if not self.layers or self.layers[-1].kind != "fc":
            raise ConfigError("the last layer must be 'fc' (the output layer, one neuron per class)")
        for i, (ly, (c, h, w)) in enumerate(zip(self.layers, self.shapes())):
            if not 0 <= ly.weight_bits <= 8 or (ly.weight_bits > 1 and ly.kind != "conv"):
                raise ConfigError(f"layer {i} ({ly.kind}): weight_bits={ly.weight_bits}: choose 0..8 on a conv layer "
                                  "(the output layer's width is out_weight_bits)")  # fmt: skip
            if ly.kernel < 1 or ly.stride < 1 or ly.padding < 0:
                raise ConfigError(f"layer {i} ({ly.kind}): kernel and stride must be >= 1, padding >= 0")
            if h < 1 or w < 1 or c < 1:
                raise ConfigError(f"layer {i} ({ly.kind}) leaves an empty output {c}x{h}x{w}")


def _config_dict(path_or_name: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config's TOML as a dict, with ``base = "NAME"`` resolved: the base config's settings,
    this file's on top (its [train] keys one by one, and so its [train.real] / [train.binary]
    keys; its layers, if any, replace the base's)."""
    p = Path(path_or_name)
    if not p.is_file():
        cand = CONFIG_DIR / f"{path_or_name}.toml"
        if not cand.is_file():
            names = sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))
            raise ConfigError(f"config {path_or_name!r} not found: give a TOML file or one of {names}")
        p = cand
    if p.resolve() in seen:
        raise ConfigError(f"{p}: config bases form a cycle ({' -> '.join(str(s) for s in seen)})")
    try:
        d = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from e
    if "base" not in d:
        return d
    out = _config_dict(d.pop("base"), (*seen, p.resolve()))
    base_train, own_train = out.get("train", {}), d.pop("train", {})
    train = {**base_train, **own_train}
    for mode in MODES:  # a mode's sub-table on top of the base's, key by key
        if isinstance(base_train.get(mode), dict) and isinstance(own_train.get(mode), dict):
            train[mode] = {**base_train[mode], **own_train[mode]}
    return {**out, **d, "train": train}


def load_config(path_or_name: str | Path) -> tuple[NetConfig, dict[str, Any]]:
    """Read a TOML config (a path, or a name in train/configs) -> (NetConfig, [train] table)."""
    d = _config_dict(path_or_name)
    return NetConfig.from_dict(d), dict(d.get("train", {}))


def integer_threshold(theta: float, alpha: torch.Tensor) -> torch.Tensor:
    """Exported integer threshold of a binary layer: ceil(theta / alpha), in float64.

    V_eff >= theta  <=>  sum sign(w) max(0, t - t_i) >= theta / alpha  <=>  integer sum >= this.
    """
    return torch.ceil(torch.as_tensor(theta, dtype=torch.float64) / alpha.detach().double()).clamp_min(1)


class SpikingLayer(nn.Module):
    """A spiking convolution or dense layer (dense = kernel covering the whole input)."""

    def __init__(self, cin: int, cout: int, kh: int, kw: int, stride: int, padding: int, cfg: NetConfig,
                 weight_bits: int = 1, shared_alpha: bool = False):  # fmt: skip
        super().__init__()
        self.set_weight_bits(weight_bits)
        self.stride, self.padding = stride, padding
        self.T = cfg.T
        self.binary = cfg.mode == "binary"
        self.clip = cfg.clip
        self.bias = cfg.bias
        self.windows = cfg.layer_windows != "off"
        self.ramped = cfg.layer_windows == "ramp"
        self.ramp_pow2 = cfg.ramp_pow2
        self.weight = nn.Parameter(torch.empty(cout, cin + self.bias, kh, kw).uniform_(-1.0, 1.0))
        if self.bias:  # the bias channel starts at a zero ramp. Its kh x kw weights of a channel get the same
            # gradient (one input at t = 0; padding aside), so they move together: real mode starts them at 0;
            # binary mode spreads them evenly over (-1, 1) (signs summing to 0 or 1), and a common shift then
            # turns their signs one at a time (a ramp of -kh*kw..kh*kw steps of alpha)
            if self.binary:
                grid = (torch.arange(kh * kw, dtype=torch.float32) + 0.5) / (kh * kw) * 2 - 1
                self.weight.data[:, -1] = grid[torch.randperm(kh * kw)].view(kh, kw)
            else:
                self.weight.data[:, -1] = 0.0
        self.register_buffer("theta", torch.tensor(float(cfg.theta * cfg.T), dtype=torch.float64))
        if self.binary:
            self.log_alpha = nn.Parameter(torch.zeros(cout if cfg.per_channel_alpha and not shared_alpha else 1))

    def set_weight_bits(self, bits: int) -> None:
        """Width of the exported integer weights (binary mode): 1 = sign, k > 1 = round(w * qmax)."""
        self.weight_bits = bits
        self.qmax = (1 << (bits - 1)) - 1 if bits > 1 else 1

    def per_channel(self) -> bool:
        return (not self.binary) or self.log_alpha.numel() > 1

    def alpha(self) -> torch.Tensor:
        a = torch.exp(self.log_alpha)
        return a.expand(self.weight.shape[0]) if a.numel() == 1 else a

    def sign(self) -> torch.Tensor:
        """Integer weights of binary mode: +-1 (sign(0) = +1), or for a k-bit layer
        round(w * qmax) clamped to -qmax..qmax."""
        if self.weight_bits > 1:
            return torch.clamp(torch.round(self.weight * self.qmax), -self.qmax, self.qmax)
        return torch.where(self.weight >= 0, 1.0, -1.0).to(self.weight.dtype)

    def effective(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w_eff for gradients, w_fwd and thr_fwd the forward pass computes with)."""
        if self.binary:
            s = self.sign()
            w = self.weight
            ste = (w - w.detach()) * self.qmax  # d(integer weight)/dw: 1 for sign, qmax for rounding
            if self.clip:
                ste = ste * (w.detach().abs() <= 1.0)
            alpha = self.alpha()
            w_eff = alpha.view(-1, 1, 1, 1) * (s + ste)
            return w_eff, s.to(torch.int32), integer_threshold(self.theta, alpha).long()
        thr = self.theta.expand(self.weight.shape[0])
        return self.weight, self.weight.double(), thr

    def integer_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary mode: (+-1 int32 weights, int64 thresholds), exactly what the hardware runs."""
        _, w, thr = self.effective()
        return w.detach(), thr.detach()

    def layer_input(self, t_in: torch.Tensor) -> torch.Tensor:
        """The spike times (B, C, H, W) the layer computes with: with ``bias``, one more channel
        that fires at t = 0 everywhere (B, C + 1, H, W)."""
        return torch.cat([t_in, torch.zeros_like(t_in[:, :1])], dim=1) if self.bias else t_in

    def forward(self, t_in: torch.Tensor, backend: str = "auto", norm: bool = False, latency: str = "rho") -> torch.Tensor:
        w_eff, w_fwd, thr = self.effective()
        t_in = self.layer_input(t_in)
        be = resolve_backend(backend, t_in.device)
        rho = float(self.theta) / self.T
        if self.windows:
            r_fwd, r_eff = self.ramp() if self.ramped else (None, None)
            return WindowFire.apply(t_in, w_eff, w_fwd, thr, rho, self.T, self.stride, self.padding, norm, latency, r_fwd, r_eff)
        return SpikeFire.apply(t_in, w_eff, w_fwd, thr, rho, self.T, self.stride, self.padding, be, norm, latency)

    def ramp(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ramp in the forward's units, its effective value) per output channel, for
        ``layer_windows = "ramp"``: theta / T in effective units (theta_l = theta T is crossed at
        the window's end from V = 0); binary mode: the integer max(1, round(theta / (T alpha))),
        whose effective value is alpha times it (``ramp_pow2``: 2^round(log2(theta / (T alpha))), at least 1)."""
        rho = float(self.theta) / self.T
        if not self.binary:
            r = torch.full((self.weight.shape[0],), rho, dtype=torch.float64)
            return r, r
        alpha = self.alpha().detach().double()
        r = torch.exp2(torch.round(torch.log2(rho / alpha))) if self.ramp_pow2 else torch.round(rho / alpha)
        r = torch.clamp(r, min=1.0)
        return r, r * alpha

    def potential_times(self, t_in: torch.Tensor) -> torch.Tensor:
        """Input times on the layer's own clock, for V_j(t) = sum_i w_ji max(0, t - t_i): the
        ``layer_input``; with ``layer_windows`` the inputs that fired come a window earlier (t_i - T)
        and silent ones never (3T: past any t of the window)."""
        t = self.layer_input(t_in)
        if not self.windows:
            return t
        return torch.where(t < self.T, t - self.T, torch.full_like(t, 3.0 * self.T))

    def potential_at(self, t_in: torch.Tensor, t: float, effective: bool = False) -> torch.Tensor:
        """V_j(t) with the forward weights (float64; exact integers in binary mode), or with
        ``effective`` the differentiable V_j(t) of the effective weights and ramps (alpha times
        those integers in binary mode; its gradients: dV/dw_ji = the input's term, dV/dt_i = -w_ji
        for an input that fired before t, 0 for a silent one)."""
        w_eff, w_fwd, _ = self.effective()
        w = w_eff if effective else w_fwd.double()
        if self.ramped:  # V(t) = A + t r in the layer's window
            t_in = self.layer_input(t_in).to(w.dtype if effective else torch.float64)
            a = torch.where(t_in < self.T, self.T - t_in, torch.zeros_like(t_in))
            v = F.conv2d(a, w.to(a.device), stride=self.stride, padding=self.padding)
            r = self.ramp()[1 if effective else 0].to(device=v.device, dtype=v.dtype)
            return v + t * r.view(1, -1, 1, 1)
        x = F.relu(t - self.potential_times(t_in).to(w.dtype if effective else torch.float64))  # relu: no gradient at t_i = t
        return F.conv2d(x, w.to(x.device), stride=self.stride, padding=self.padding)


class CSNN(nn.Module):
    """Convolutional spiking network; ``forward`` returns output spike times (B, classes)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.T = cfg.T
        self.register_buffer("table", torch.from_numpy(input_table(cfg.T, cfg.input_gamma)).long())
        mods: list[nn.Module] = []
        self.kinds: list[str] = []
        self.pools: list[int] = []
        ins = [tuple(cfg.input_shape), *cfg.shapes()[:-1]]
        widths = iter(cfg.weight_widths())
        last = len(cfg.layers) - 1
        for i, (ly, (c, h, w)) in enumerate(zip(cfg.layers, ins)):
            if ly.kind == "conv":
                mods.append(SpikingLayer(c, ly.channels, ly.kernel, ly.kernel, ly.stride, ly.padding, cfg, next(widths, 1)))
            elif ly.kind == "pool":
                mods.append(nn.Identity())
            else:
                mods.append(SpikingLayer(c, ly.channels, h, w, 1, 0, cfg, next(widths, 1),
                                         shared_alpha=i == last and cfg.output == "potential"))  # fmt: skip
            self.kinds.append(ly.kind)
            self.pools.append(ly.kernel if ly.kind == "pool" else 0)
        self.layers = nn.ModuleList(mods)
        self.backend = "auto"
        self.norm_grad = False
        self.latency = "rho"  # linearisation of dt/dV in the backward (functional.latency_slope)
        self.dropout = 0.0  # training only (TrainConfig.dropout): inverted dropout on the dense layers' inputs
        self.dropout_rng: torch.Generator | None = None

    @property
    def num_classes(self) -> int:
        return self.cfg.layers[-1].channels

    def spiking_layers(self) -> list[SpikingLayer]:
        return [m for m in self.layers if isinstance(m, SpikingLayer)]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return encode(images, self.table)

    def forward_all(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Spike times after every layer (the input times first), each (B, C, H, W)."""
        t = self.encode(images)
        outs = [t]
        last = len(self.layers) - 1
        for i, (kind, k, mod) in enumerate(zip(self.kinds, self.pools, self.layers)):
            if kind == "pool":
                t = min_pool(t, k)
            elif i == last and self.cfg.output == "potential":  # never fires (CSNN.logits reads its potentials)
                dt = t.dtype if t.is_floating_point() else torch.float32
                t = torch.full((t.shape[0], self.num_classes, 1, 1), float(self.T), dtype=dt, device=t.device)
            else:
                t = mod(self._input_of(kind, t), self.backend, self.norm_grad, self.latency)
            outs.append(t)
        return outs

    def _input_of(self, kind: str, t: torch.Tensor) -> torch.Tensor:
        """A layer's input times: a dense layer's dropped in training with ``dropout``, else ``t``."""
        return self._dropped(t) if kind == "fc" and self.training and self.dropout > 0 else t

    def _dropped(self, t: torch.Tensor) -> torch.Tensor:
        """Inverted dropout in spike-time terms: each input silenced (t = T) with probability p, the
        others' values T - t divided by 1 - p (earlier, fractional, possibly before the window),
        so that a layer's sums keep their expectation; the gradient flows to the kept ones."""
        p = self.dropout
        keep = torch.rand(t.shape, generator=self.dropout_rng, device=t.device) >= p
        silent = torch.full_like(t, float(self.T))
        return torch.where(keep & (t < self.T), self.T - (self.T - t) / (1.0 - p), silent)

    def forward(self, images: torch.Tensor, all_layers: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Output spike times (B, classes), or with ``all_layers`` the list of forward_all."""
        outs = self.forward_all(images)
        return outs if all_layers else outs[-1].flatten(1)

    def logits(self, t_in: torch.Tensor) -> torch.Tensor:
        """``output = "potential"``: the output layer's V(T-1) / theta_l (B, classes) from its input
        times (``forward_all``'s last but one), differentiable: the cross-entropy's logits. Binary
        mode: alpha times the integer V(T-1) the hardware compares, one alpha for all classes. In
        training with ``dropout``, a dense output layer's inputs are dropped as forward_all drops
        the other dense layers'."""
        out = self.layers[-1]
        t_in = self._input_of(self.kinds[-1], t_in)
        return (out.potential_at(t_in, self.T - 1, effective=True) / float(out.theta)).flatten(1)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(classes, spike times of every layer) with the decision rule of the model."""
        outs = self.forward_all(images)
        return self.decide(outs[-1].flatten(1), outs[-2]), outs

    @torch.no_grad()
    def decide(self, t_out: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        """Classes from the output times and the output layer's input times, by the model's
        decision rule (``cfg.silent_rule`` for images where no output fires)."""
        out = self.layers[-1]
        if bool((t_out.min(dim=1).values < self.T).all()):  # every image decided by a spike: no potentials needed
            return torch.argmin(t_out.detach(), dim=1)  # (functional.decide's earliest spike, lowest index on ties)
        v_last = out.potential_at(t_in.detach(), self.T - 1).flatten(1)
        thr = None
        if self.cfg.decision_rule == "margin":  # the thresholds as exported: at most the highest reachable V + 1
            _, w, thr = out.effective()
            pos = w.detach().double().clamp_min(0).flatten(1).sum(1)
            if out.ramped:  # modelfile.potential_range with ramps
                hi = pos * self.T + (self.T - 1) * out.ramp()[0]
            else:
                hi = pos * ((2 * self.T if out.windows else self.T) - 1)
            thr = torch.minimum(thr.detach().double(), hi + 1).to(v_last.device)
        return decide(t_out.detach(), v_last, self.T, thr)

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, method: str = "median", skip: int = 0) -> None:
        """Data-driven initialisation, layer by layer: scale each channel (alpha in binary
        mode, the weights in real mode) so that about ``calib_fire`` of its neurons cross
        threshold by ``calib_time * T`` on this batch. ``skip``: the first that many spiking
        layers keep their scales (initialised from a checkpoint) and only carry the batch on.

        ``method``: "positive" takes the quantile over the neurons whose peak potential is
        positive (the only ones that can fire); "median" (the original) over all neurons with
        input, falling back to the channel's maximum when that quantile is <= 0. With random
        +-1 kernels on MNIST about half of the channels have a quantile <= 0 there, so
        "median" leaves them firing on ~0% of the images (threshold = the maximum), and
        channels with a quantile of 1 get threshold 1 (alpha = theta).

        "fan_in" (real mode) uses no data: w ~ U(-1, 1) / sqrt(fan-in), the usual start of a dense
        network (a ramp network's layers are dense clipped ReLUs: functional.RampReLU)."""
        if method == "fan_in":
            if self.cfg.mode != "real":
                raise ValueError("calib 'fan_in' sets real-valued weights; binary mode takes 'positive' or 'median'")
            with torch.no_grad():
                for mod in self.spiking_layers()[skip:]:
                    mod.weight.uniform_(-1.0, 1.0).mul_(mod.weight[0].numel() ** -0.5)
                    if mod.bias:  # the bias channel starts at 0, as at construction
                        mod.weight[:, -1] = 0.0
            return
        if method not in ("positive", "median"):
            raise ValueError(f"unknown calibration {method!r}; use 'positive', 'median' or 'fan_in'")
        cfg = self.cfg
        t = self.encode(images)
        n_layers = len(self.layers)
        spiking = 0
        for idx, (kind, k, mod) in enumerate(zip(self.kinds, self.pools, self.layers)):
            if kind == "pool":
                t = min_pool(t, k)
                continue
            spiking += 1
            if spiking <= skip:
                t = mod(t, self.backend)
                continue
            last = idx == n_layers - 1
            t_ref = (cfg.out_calib_time if last else cfg.calib_time) * self.T
            t_in = mod.potential_times(t).double()
            x = torch.clamp(t_ref - t_in, min=0.0)
            unit = mod.sign().double() if mod.binary else mod.weight.double()
            if mod.ramped:  # V(t_ref) = A + t_ref rho >= theta T  <=>  A >= theta (T - t_ref): scale A to compare with theta T
                v = F.conv2d(torch.clamp(-t_in, min=0.0), unit, stride=mod.stride, padding=mod.padding) * (self.T / (self.T - t_ref))
            else:  # peak of V over a few times up to t_ref: a neuron has fired by t_ref iff its peak >= thr
                v = None
                for frac in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0):
                    xf = torch.clamp(frac * t_ref - t_in, min=0.0)
                    vf = F.conv2d(xf, unit, stride=mod.stride, padding=mod.padding)  # (B, Co, H, W)
                    v = vf if v is None else torch.maximum(v, vf)
            # only neurons whose receptive field receives spikes by t_ref count
            ones = torch.ones_like(unit[:1])
            active = F.conv2d((x > 0).double(), ones, stride=mod.stride, padding=mod.padding) > 0
            v = v.transpose(0, 1)[:, active.squeeze(1)]  # (Co, N active)
            if v.shape[1] == 0:
                v = torch.ones(v.shape[0], 1, dtype=torch.float64)
            if method == "positive":
                # quantile over positive peaks only (NaN marks the others; nanquantile skips them)
                vp = torch.where(v > 0, v, torch.full_like(v, float("nan")))
                q = torch.nanquantile(vp, 1.0 - cfg.calib_fire, dim=1)
                if not mod.per_channel():
                    q = torch.nanquantile(vp.flatten(), 1.0 - cfg.calib_fire).expand_as(q)
                q = torch.nan_to_num(q, nan=1.0)
            else:
                q = torch.quantile(v, 1.0 - cfg.calib_fire, dim=1)
                if not mod.per_channel():
                    q = torch.quantile(v.flatten(), 1.0 - cfg.calib_fire).expand_as(q)
            fallback = v.max(dim=1).values.clamp_min(1.0)
            q = torch.where(q > 0, q, fallback)
            theta = float(mod.theta)
            if mod.binary:
                a = theta / q
                mod.log_alpha.copy_(torch.log(a if mod.log_alpha.numel() > 1 else a.mean().view(1)).float())
            else:
                mod.weight.mul_((theta / q).view(-1, 1, 1, 1).float())
            t = mod(t, self.backend)
            frac = (t < self.T).float().mean().item()
            log.info("calibrated layer %d (%s): %.1f%% of neurons fire", idx, kind, 100 * frac)


def build(cfg: NetConfig) -> CSNN:
    return CSNN(cfg)


def count_params(model: CSNN) -> int:
    return sum(m.weight.numel() for m in model.spiking_layers())


def describe(model: CSNN) -> str:
    c, h, w = model.cfg.input_shape
    lines = [f"{model.cfg.name}: mode={model.cfg.mode} T={model.T} input={c}x{h}x{w}"]
    x = torch.zeros(1, *model.cfg.input_shape, dtype=torch.uint8)
    with torch.no_grad():
        outs = model.forward_all(x)
    for kind, o in zip(model.kinds, outs[1:]):
        lines.append(f"  {kind:5s} -> {tuple(o.shape[1:])}")
    lines.append(f"  synapses (weights): {count_params(model):,}")
    return "\n".join(lines)

