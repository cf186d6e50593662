"""The warm solver route (``solver="warm"``): each training step's polar factor from the previous step's,
by matrix products only — no decomposition, no host read — with an exact refresh now and then.

Consecutive training steps solve nearby problems (the running class means move by ``α_t`` per step).
With ``S = ZᵀZ`` and ``P = S^{1/2}``, the solution is ``U = polar(Z) = Z P⁻¹``. The route keeps ``P`` and
``P⁻¹`` from the previous step as ``X = VᵀPV`` and ``Y = VᵀP⁻¹V`` in a basis ``V`` in which they were
diagonal at the last exact solve (a *refresh*: the float64 eigendecomposition of ``S``), and updates
them for the current ``Z``:

    S̃ = Vᵀ S V                                        the current Gram matrix in the stale basis
    X ← X + E,   X E + E X = S̃ − X²                    Newton's method for X² = S̃      (``newton`` steps) (1)
    Y ← Y + F,   X F + F X = 2I − XY − YX              Newton's method for XY + YX = 2I (``inverse`` steps) (2)
    U = Z (V Y Vᵀ)                                                                                     (3)

(1) converges to the unique positive definite square root of the *current* ``S̃``: the warm start
only shortens the way, it never changes the answer (unlike a polynomial polar iteration started
from ``U_prev``, whose limit is ``polar(U_prev)``). (2) holds because for positive definite ``X`` the
Lyapunov equation ``XY + YX = 2I`` has the single solution ``Y = X⁻¹``. Each Lyapunov equation
``X E + E X = R`` is solved by ``cg`` conjugate-gradient iterations on symmetric matrices (the
operator is self-adjoint and positive definite), preconditioned by its exact solution for the
diagonal of ``X``, ``E_ij = R_ij / (x_ii + x_jj)`` — good while ``V`` is close to the eigenbasis.

**Certificate.** ``η = max|Y S̃ Y − I| = max|UᵀU − I|``. Because ``Q = V Y Vᵀ`` is symmetric, ``UᵀU = I``
forces ``U = polar(Z)`` (``T = P Q`` is then orthogonal with positive eigenvalues, so ``T = I``), and to
first order ``‖U − polar(Z)‖ ≲ η``: the certificate measures the error of the answer, not of a proxy.

**Policy** (host side; on a GPU a regular step reads nothing back from the device):
- A *refresh* (exact: ``eigh`` of ``S`` in float64, like the Gram route, one host synchronisation)
  runs at the first step; when the previous step's ``η`` exceeded ``soft_tol`` (read one step late,
  through a non-blocking copy); when ``interval`` steps have passed since the last refresh; and
  while the refreshes see the problem move fast (``‖S − S_prev‖_F/‖S‖_F > drift_max`` between
  consecutive steps, e.g. the first steps, where the running means have ``α_t = 2/(t+1)``).
- ``interval`` starts at ``first_interval``, doubles after every interval whose warm steps all met
  ``soft_tol`` (up to ``max_interval``) and halves after a miss; a miss also halves the drift
  threshold (restored, doubling, by clean intervals), so a fast-moving problem stays on exact solves.
- The first ``cold_steps`` calls are all exact (the running means move fastest there: ``α_t = 2/(t+1)``).
- A regular step whose own ``η`` exceeds ``hard_tol`` (a *miss*, e.g. after a sudden jump of the means):
  - on the CPU (``refresh_on_miss=None``, the default, or ``True``), where reading ``η`` costs nothing, the
    same step is solved again exactly (a refresh, counted in ``refreshes``): the answer is exact;
  - on other devices (or ``refresh_on_miss=False``) the step is not waited for: it counts in ``fallbacks``,
    its ``U`` (error ≈ ``η``) is used up to ``accept_tol``, beyond which it keeps ``U_prev`` (a device-side
    select, no sync; ``U_prev`` can be far from the answer: 0.36 max-abs after a jump at ``K = 100``), and
    the next step refreshes. ``fallbacks`` thus counts the steps whose answer was not within ``hard_tol``.
    In the convergence-parity runs (studies/results/warm-parity) misses came only in the first epoch,
    before ``cold_steps`` existed.
- A call rejected by the caller (``accept=False``: a non-finite or empty batch) leaves no trace: the buffers
  are put back by device-side selects, the policy when the flag reaches the host (one call later, through a
  non-blocking copy, or at ``state_dict()``): the next call decides as if the rejected one never happened.

**Backward** of a regular step (the implicit derivative, as in :mod:`ncguide.polar_iteration`):
``∂L/∂Z = U (Ω − W P⁻¹) + G P⁻¹`` with ``W = UᵀG`` and ``P Ω + Ω P = W − Wᵀ``, the Lyapunov equation
solved by ``backward_cg`` preconditioned CG iterations in the stale basis with ``P = V X Vᵀ``.
A refresh step's backward is the closed form of :mod:`ncguide.solve`.

**Cost**, in ``d×K×K`` products (``dK²``) and ``K×K×K`` products (``K³``), all float64: forward
``2 dK² + (6 + newton·(1 + cg) + inverse·(1 + cg)) K³``; backward ``3 dK² + (5 + backward_cg) K³``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .etf import as_size
from .polar_iteration import _sym
from .solve import GRAM_MIN_RATIO, _polar_backward, gram_singular

__all__ = ["WarmSettings", "WarmPolarSolver", "warm_polar", "lyapunov_cg"]


@dataclass(frozen=True)
class WarmSettings:
    """Iteration counts and the refresh policy of the warm route (see the module docstring).

    - newton: Newton steps for the square root ``X² = S̃`` per regular step.
    - inverse: Newton steps for the inverse ``Y = X⁻¹``.
    - cg: conjugate-gradient iterations per Lyapunov solve of the forward.
    - backward_cg: conjugate-gradient iterations of the backward's Lyapunov solve.
    - soft_tol: a step whose certificate ``η`` exceeds it makes the next step a refresh.
    - hard_tol: a step whose ``η`` exceeds it is a miss (solved again on the CPU, else a counted fallback).
    - accept_tol: a fallback's own ``U`` is used up to this ``η``; beyond, ``U_prev``.
    - drift_max: refreshes continue while ``‖S − S_prev‖_F/‖S‖_F`` between them exceeds it.
    - cold_steps: the first calls, all exact.
    - first_interval: steps between refreshes at the start; doubled after each clean interval.
    - max_interval: the longest interval between refreshes.
    - refresh_on_miss: solve a missed step again exactly at once (``None``: on the CPU only).
    """

    newton: int = 3
    inverse: int = 2
    cg: int = 5
    backward_cg: int = 8
    soft_tol: float = 1e-8
    hard_tol: float = 1e-6
    accept_tol: float = 1e-3
    drift_max: float = 0.05
    cold_steps: int = 64
    first_interval: int = 4
    max_interval: int = 256
    refresh_on_miss: bool | None = None  # None: on the CPU only

    def __post_init__(self) -> None:
        for name in ("newton", "inverse", "cg", "backward_cg", "first_interval", "max_interval"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"WarmSettings.{name} must be an integer >= 1; got {value!r}")
        if self.first_interval > self.max_interval:
            raise ValueError(
                f"need first_interval <= max_interval; got {self.first_interval}, {self.max_interval}"
            )
        if not 0 < self.soft_tol <= self.hard_tol <= self.accept_tol:
            raise ValueError(
                f"need 0 < soft_tol <= hard_tol <= accept_tol; got {self.soft_tol}, {self.hard_tol}, {self.accept_tol}"
            )
        if not (isinstance(self.cold_steps, int) and not isinstance(self.cold_steps, bool) and self.cold_steps >= 0):
            raise ValueError(f"WarmSettings.cold_steps must be an integer >= 0; got {self.cold_steps!r}")
        if not self.drift_max > 0:
            raise ValueError(f"drift_max must be > 0; got {self.drift_max}")
        if self.refresh_on_miss not in (None, True, False):
            raise ValueError(f"WarmSettings.refresh_on_miss must be None, True or False; got {self.refresh_on_miss!r}")


def lyapunov_cg(X: torch.Tensor, R: torch.Tensor, iterations: int, antisymmetric: bool = False) -> torch.Tensor:
    """Approximate ``E`` with ``X E + E X = R`` (``X`` symmetric positive definite, ``R`` symmetric, or
    antisymmetric with ``antisymmetric=True``) by ``iterations`` preconditioned conjugate-gradient steps from
    ``E = 0``.

    Preconditioner: the exact solution for ``diag(X)``, ``R_ij / (x_ii + x_jj)``. Fixed iteration count,
    scalars kept on the device: no host read. Cost: one ``K×K×K`` product per iteration.
    """
    x = X.diagonal()
    D = x.unsqueeze(-1) + x.unsqueeze(-2)
    sign = -1.0 if antisymmetric else 1.0
    zero = X.new_zeros(())
    E = torch.zeros_like(R)
    r = R
    z = r / D
    p = z
    rz = (r * z).sum()
    floor = rz * torch.finfo(X.dtype).eps ** 2  # residual at rounding level: stop (steps of zero)
    for _ in range(iterations):
        Xp = X @ p
        Ap = Xp + sign * Xp.transpose(-1, -2)  # X p + p X, as p is (anti)symmetric and X symmetric
        pAp = (p * Ap).sum()
        live = (rz > floor) & (pAp > 0)
        a = torch.where(live, rz / torch.where(live, pAp, 1.0), zero)
        E = E + a * p
        r = r - a * Ap
        z = r / D
        rz_next = (r * z).sum()
        p = z + torch.where(live, rz_next / torch.where(live, rz, 1.0), zero) * p
        rz = rz_next
    return E


def _warm_iterations(Z: torch.Tensor, V: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, s: WarmSettings):
    """Steps (1)–(3) in float64. Returns ``U, X, Y, Q = V Y Vᵀ`` and the certificate ``η``."""
    eye = torch.eye(Z.shape[-1], dtype=Z.dtype, device=Z.device)
    St = _sym(V.transpose(-1, -2) @ (Z.transpose(-1, -2) @ Z) @ V)
    for _ in range(s.newton):
        X = _sym(X + lyapunov_cg(X, St - X @ X, s.cg))
    for _ in range(s.inverse):
        XY = X @ Y
        Y = _sym(Y + lyapunov_cg(X, 2 * eye - XY - XY.transpose(-1, -2), s.cg))
    eta = (Y @ St @ Y - eye).abs().amax()
    Q = _sym(V @ Y @ V.transpose(-1, -2))
    return Z @ Q, X, Y, Q, eta


class _WarmPolar(torch.autograd.Function):
    """A regular step: forward (1)–(3), backward the implicit derivative by preconditioned CG."""

    @staticmethod
    def forward(ctx, Z, V, X, Y, settings):  # type: ignore[override]
        Z64 = Z.double()
        U, X, Y, Q, eta = _warm_iterations(Z64, V, X, Y, settings)
        ctx.save_for_backward(U, V, X, Q)
        ctx.settings, ctx.dtype = settings, Z.dtype
        ctx.mark_non_differentiable(X, Y, eta)
        return U.to(Z.dtype), X, Y, eta

    @staticmethod
    @once_differentiable
    def backward(ctx, G, *_):  # type: ignore[override]
        U, V, X, Q = ctx.saved_tensors
        G = G.double()
        W = U.transpose(-1, -2) @ G
        Vt = V.transpose(-1, -2)
        C = Vt @ (W - W.transpose(-1, -2)) @ V
        omega = V @ lyapunov_cg(X, C, ctx.settings.backward_cg, antisymmetric=True) @ Vt
        dZ = U @ (omega - W @ Q) + G @ Q
        return dZ.to(ctx.dtype), None, None, None, None


class _Refresh(torch.autograd.Function):
    """A refresh step: ``polar(Z)`` from the float64 ``eigh(ZᵀZ) = V diag(p²) Vᵀ``; the closed-form backward."""

    @staticmethod
    def forward(ctx, Z):  # type: ignore[override]
        Z64 = Z.double()
        p, V = gram_singular(Z64)
        if not bool(p[0] > GRAM_MIN_RATIO * p[-1]):
            raise ValueError(
                f"the warm route needs a well-conditioned Z (σ_min/σ_max = {float(p[0] / p[-1]):.1e} <= "
                f"{GRAM_MIN_RATIO}; σ_min(Z) >= δ/2, so a small delta allows this): increase delta "
                "(e.g. the default 1e-3) or use solver='polar'"
            )
        A = (Z64 @ V) / p
        U = A @ V.transpose(-1, -2)
        ctx.save_for_backward(A, p, V.transpose(-1, -2).contiguous())
        ctx.dtype = Z.dtype
        ctx.mark_non_differentiable(V, p)
        return U.to(Z.dtype), V, p

    @staticmethod
    @once_differentiable
    def backward(ctx, G, *_):  # type: ignore[override]
        A, p, Bh = ctx.saved_tensors
        return _polar_backward(A, p, Bh, G.double()).to(ctx.dtype)


def warm_polar(
    Z: torch.Tensor, V: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, settings: WarmSettings = WarmSettings()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One regular step, functional: ``Z`` (``d×K``) and the state ``V, X, Y`` (``K×K``, float64) →
    ``U ≈ polar(Z)`` (dtype of ``Z``, differentiable w.r.t. ``Z``), the new ``X, Y`` and ``η``; ``settings``
    give the iteration counts (``WarmSettings``). Stateless,
    so ``gradcheck`` applies; :class:`WarmPolarSolver` adds the state and the refresh policy."""
    return _WarmPolar.apply(Z, V, X, Y, settings)


class WarmPolarSolver(nn.Module):
    """Stateful ``polar(Z)`` for a sequence of nearby ``d×K`` problems (one per training step).

    ``solver(Z, U_prev) -> U``. Buffers (in ``state_dict``, so a resumed run continues exactly): the
    stale basis ``V``, ``X``, ``Y`` (float64, ``K×K``), the last certificate ``eta``, counters
    ``refreshes``, ``fallbacks``, ``steps``; the host-side policy state travels as extra state.
    ``last_refreshed`` tells whether the latest call was a refresh (the only calls that decompose a
    matrix or read from the device).
    """

    _STATE = ("V", "X", "Y", "eta")  # float64 whatever ``module.float()`` / ``.half()`` ask for

    def __init__(self, num_classes: int, settings: WarmSettings | None = None) -> None:
        """Args:
            num_classes: ``K``, the width of the problems ``Z`` (``d×K``; an integer >= 2).
            settings: the iteration counts and refresh policy (``WarmSettings()`` when ``None``).
        """
        super().__init__()
        k = as_size("num_classes", num_classes, 2)
        eye = torch.eye(k, dtype=torch.float64)
        self.register_buffer("V", eye.clone())
        self.register_buffer("X", eye.clone())
        self.register_buffer("Y", eye.clone())
        self.register_buffer("eta", torch.zeros((), dtype=torch.float64))
        self.register_buffer("refreshes", torch.zeros((), dtype=torch.long))
        self.register_buffer("fallbacks", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._policy = {"ready": False, "cold": True, "since": 0, "pending": False, "calls": 0}
        self.settings = settings or WarmSettings()  # sets the policy's interval and drift threshold
        self._eta_host: torch.Tensor | None = None
        self._eta_event = None
        self._unsettled: tuple | None = None  # (the policy before a call with ``accept``, the flag's copy event)
        self._accept_host: torch.Tensor | None = None
        self.last_refreshed = False

    @property
    def settings(self) -> WarmSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: WarmSettings) -> None:
        """Assigning new settings restarts the adaptive interval and drift threshold from them (as a
        fresh solver would), so ``solver.settings = WarmSettings(...)`` means the same as passing them."""
        if not isinstance(settings, WarmSettings):
            raise ValueError(f"settings must be a WarmSettings; got {type(settings).__name__}")
        if getattr(self, "_unsettled", None) is not None:
            self._settle()
        self._settings = settings
        self._policy.update(interval=settings.first_interval, drift_max=settings.drift_max)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` moves the state; dtype casts (``.float()``, ``.half()``, ``.to(dtype)``) leave the
        float64 state as it is (cast down, the next regular step would mix dtypes and lose precision)."""
        saved = {name: getattr(self, name) for name in self._STATE}
        super()._apply(fn, recurse)
        for name, old in saved.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                setattr(self, name, old.to(device=new.device))
        return self

    # ---- policy state in the checkpoint -------------------------------------------------------------
    def get_extra_state(self) -> dict:
        self._settle()  # a rejected last call must not be saved as counted
        return {"policy": dict(self._policy), "settings": asdict(self.settings)}

    def set_extra_state(self, state: dict) -> None:
        self._unsettled = None  # the loaded policy replaces the current one, settled or not
        self.settings = WarmSettings(**state["settings"])
        self._policy = dict(state["policy"])
        self._eta_host = None  # a pending certificate is read from the loaded ``eta`` buffer

    # ---- one step -------------------------------------------------------------------------------------
    @torch.compiler.disable  # the refresh policy is host-side Python: torch.compile runs the solver eagerly
    def forward(self, Z: torch.Tensor, U_prev: torch.Tensor, accept: torch.Tensor | None = None) -> torch.Tensor:
        """``U ≈ polar(Z)`` (``d×K``, differentiable w.r.t. ``Z``); ``U_prev`` is the fallback of a failed step.

        ``accept`` (a 0-dim device bool, e.g. "this batch was finite and not empty"): where ``False``, the call
        leaves no trace in the solver's state. Every buffer (``V, X, Y, eta`` and the counters) is put back at once
        by device-side selects, without a host read; the host-side policy (the refresh schedule's counters) is put
        back when the flag reaches the host — its copy is started without waiting and read at the next call, or by
        ``state_dict()`` (then one sync) — so the next call and a checkpoint see the solver of a run that never
        made the rejected call. The rejected call itself still computes (a refresh among them: its host reads).
        """
        if Z.dim() != 2:
            raise ValueError(f"the warm route solves one d×K problem at a time; got Z of shape {tuple(Z.shape)}")
        self._settle()
        if accept is None:
            return self._step(Z, U_prev)
        policy = dict(self._policy)
        before = {name: buf.clone() for name, buf in self.named_buffers(recurse=False)}
        U = self._step(Z, U_prev)
        with torch.no_grad():  # rebound, not copied into: the step's backward may have saved V
            for name, old in before.items():
                setattr(self, name, torch.where(accept, getattr(self, name), old))
        if self._eta_host is not None:
            self._post_eta()  # the late certificate is that of the state kept
        self._post_accept(policy, accept)
        return U

    def _post_accept(self, policy: dict, accept: torch.Tensor) -> None:
        """Start copying ``accept`` to the host without waiting; :meth:`_settle` puts ``policy`` back if false."""
        pin = accept.device.type == "cuda"
        if self._accept_host is None or self._accept_host.is_pinned() != pin:  # allocated once (pinning syncs)
            self._accept_host = torch.zeros((), dtype=torch.bool, pin_memory=pin)
        self._accept_host.copy_(accept.detach().reshape(()), non_blocking=True)
        event = None
        if pin:
            event = torch.cuda.Event()
            event.record()
        self._unsettled = (policy, event)

    def _settle(self) -> None:
        """Read the flag of the latest call with ``accept`` (its copy started a call ago: no wait in practice) and,
        if it was rejected, put the host-side policy back as it was before that call."""
        if self._unsettled is None:
            return
        policy, event = self._unsettled
        self._unsettled = None
        if event is not None:
            event.synchronize()
        if not bool(self._accept_host.numpy()):  # a host value: no dispatch, no device read
            self._policy = policy

    def _step(self, Z: torch.Tensor, U_prev: torch.Tensor) -> torch.Tensor:
        pol, s = self._policy, self.settings
        missed = pol["pending"] and not (self._late_eta() <= s.soft_tol)  # NaN counts as a miss
        pol["pending"] = False
        pol["calls"] += 1
        self.steps += 1
        if not pol["ready"] or pol["cold"] or pol["calls"] <= s.cold_steps:
            return self._refresh(Z)
        if missed:
            self._shorten()
            return self._refresh(Z)
        if pol["since"] >= pol["interval"]:  # a clean interval: every warm step met soft_tol
            pol["interval"] = min(s.max_interval, 2 * pol["interval"])
            pol["drift_max"] = min(s.drift_max, 2 * pol["drift_max"])
            return self._refresh(Z)
        self.last_refreshed = False
        U, X, Y, eta = warm_polar(Z, self.V, self.X, self.Y, s)
        ok, usable = eta <= s.hard_tol, eta <= s.accept_tol
        if self.refreshes_on_miss(Z.device) and not bool(ok):  # a host read: free on the CPU
            self._shorten()
            return self._refresh(Z)  # the same step, solved exactly
        with torch.no_grad():
            self.X.copy_(X)
            self.Y.copy_(Y)
            self.eta.copy_(torch.where(eta.isnan(), torch.full_like(eta, torch.inf), eta))
            self.fallbacks += (~ok).long()
        self._post_eta()
        pol["since"] += 1
        pol["pending"] = True
        return torch.where(usable, U, U_prev.to(U.dtype))  # error ≈ η: better than U_prev up to accept_tol

    def refreshes_on_miss(self, device: torch.device) -> bool:
        """Whether a step whose certificate misses ``hard_tol`` is solved again exactly at once (``settings.
        refresh_on_miss``; by default on the CPU, where reading ``η`` costs nothing)."""
        on = self.settings.refresh_on_miss
        return device.type == "cpu" if on is None else on

    def _shorten(self) -> None:
        """After a miss: shorter intervals, and stay exact until the problem moves more slowly than now."""
        pol, s = self._policy, self.settings
        pol["interval"] = max(1, pol["interval"] // 2)
        pol["drift_max"] = max(pol["drift_max"] / 2, s.drift_max / 64)  # floor: a way back to warm

    def _refresh(self, Z: torch.Tensor) -> torch.Tensor:
        pol = self._policy
        U, V, p = _Refresh.apply(Z)
        with torch.no_grad():
            S = (V * p * p) @ V.transpose(-1, -2)
            drift = float("inf")
            if pol["ready"]:
                S_prev = self.V @ (self.X @ self.X) @ self.V.transpose(-1, -2)
                drift = float(torch.linalg.matrix_norm(S - S_prev) / torch.linalg.matrix_norm(S))
            self.V.copy_(V)
            self.X.copy_(torch.diag(p))
            self.Y.copy_(torch.diag(p.reciprocal()))
            self.eta.zero_()
            self.refreshes += 1
        pol.update(ready=True, cold=not drift <= pol["drift_max"], since=0)
        self.last_refreshed = True
        return U

    def _post_eta(self) -> None:
        """Start copying ``eta`` to the host without waiting (read at the next step)."""
        if self._eta_host is None or self._eta_host.device.type != "cpu":
            pin = self.eta.device.type == "cuda"
            self._eta_host = torch.zeros((), dtype=torch.float64, pin_memory=pin)
        self._eta_host.copy_(self.eta, non_blocking=True)
        self._eta_event = None  # after a move back to the CPU, no stale CUDA event to wait on
        if self.eta.device.type == "cuda":
            self._eta_event = torch.cuda.Event()
            self._eta_event.record()

    def _late_eta(self) -> float:
        """The previous step's certificate. Its copy was started a whole step ago, so waiting for it
        costs nothing in practice; after loading a checkpoint it is read from the buffer (one sync)."""
        if self._eta_host is None:
            return float(self.eta)
        if self._eta_event is not None:
            self._eta_event.synchronize()
        return float(self._eta_host.numpy())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.settings).items())
