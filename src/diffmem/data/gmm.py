"""A Gaussian mixture with an exact density and an exact score at every diffusion time.

``P0 = (1/K) sum_k N(m_k, v I_d)``: K components of equal weight, variance ``v`` in every direction.
The defaults are the synthetic experiment of Bonnaire et al. (2025, supplementary): d = 8, two
components at ``+mu`` and ``-mu`` with ``mu = 1_d``, unit variance.

Placement of the means (``mu`` is a scalar c, meaning ``c * 1_d``, or a vector of length d):

- K = 1: ``m_1 = mu``;
- K >= 2: the means come in pairs ``+u, -u`` so that the mixture has mean zero when K is even:
  ``m_1 = mu``, ``m_2 = -mu``; for the next pairs ``u_j = |mu| r_j`` with ``r_j`` a direction drawn
  uniformly on the unit sphere (row j of a standard normal draw of numpy's ``default_rng(means_seed)``,
  divided by its norm), giving ``m_3 = u_1``, ``m_4 = -u_1``, ``m_5 = u_2``, ...; with K odd the last
  mean ``u_j`` has no partner. Every mean has the norm of ``mu``, and the first K means of a mixture
  with more components are the same.

Diffused to Ornstein-Uhlenbeck time t (``x_t = e^{-t} x_0 + sqrt(1 - e^{-2t}) xi``, xi ~ N(0, I)),
with ``alpha_bar = e^{-2t}``, each component becomes ``N(sqrt(alpha_bar) m_k, v_t I)`` with
``v_t = alpha_bar v + 1 - alpha_bar``, so the score of ``P_t`` is

    grad log P_t(x) = sum_k r_k(x) (sqrt(alpha_bar) m_k - x) / v_t,
    r_k(x) = softmax_k( -|x - sqrt(alpha_bar) m_k|^2 / (2 v_t) ),

and the score of component y alone (the conditional score given the label y) is
``(sqrt(alpha_bar) m_y - x) / v_t``. For the paper's case (K = 2, v = 1) this is
``mu e^{-t} tanh(e^{-t} mu . x) - x``. The exact noise prediction at step k of a schedule is
``eps(x, k) = -sqrt(1 - alpha_bar_k) grad log P_{t_k}(x)``, so the exact denoiser samples with
:func:`diffmem.sampling.ddim` like any network.

Samples are drawn from two numpy streams spawned from ``SeedSequence(seed)`` (labels from the first,
noise from the second), filled row by row: the first m rows of ``sample(n, seed)`` equal
``sample(m, seed)`` for every m <= n, so training sets of growing n are nested, and a draw does not
depend on how it is chunked. float32 samples are the float64 ones rounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..schedule import Schedule

__all__ = ["GaussianMixture"]


@dataclass(frozen=True)
class GaussianMixture:
    """An equal-weight mixture of K isotropic Gaussians ``N(m_k, variance * I_d)`` in d dimensions.

    Examples
    --------
    >>> import torch
    >>> from diffmem.data.gmm import GaussianMixture
    >>> P0 = GaussianMixture()  # d = 8, means +1_8 and -1_8, unit variance
    >>> x = P0.sample(4, seed=0)
    >>> x.shape, x.dtype
    (torch.Size([4, 8]), torch.float64)
    >>> bool(torch.allclose(P0.score(x, 0.5), P0.means[0] * math.exp(-0.5)
    ...      * torch.tanh(math.exp(-0.5) * x @ P0.means[0])[:, None] - x))
    True
    """

    d: int = 8
    """Dimension of the data."""
    mu: float | tuple[float, ...] = 1.0
    """The first mean: a scalar c (meaning c * 1_d) or a vector of length d; the others are placed from it."""
    components: int = 2
    """Number of components K (equal weights)."""
    variance: float = 1.0
    """Variance v of every component in every direction (covariance v * I_d)."""
    means_seed: int = 0
    """Seed of the directions of the means beyond +mu and -mu (only used when K > 2)."""

    def __post_init__(self) -> None:
        if isinstance(self.d, bool) or int(self.d) != self.d or self.d < 1:
            raise ValueError(f"d must be an integer >= 1 (the data dimension), got {self.d!r}")
        object.__setattr__(self, "d", int(self.d))
        if isinstance(self.components, bool) or int(self.components) != self.components or self.components < 1:
            raise ValueError(f"components must be an integer >= 1 (the number K of Gaussians), got {self.components!r}")
        object.__setattr__(self, "components", int(self.components))
        v = float(self.variance)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"variance must be a positive finite number, got {self.variance!r}")
        object.__setattr__(self, "variance", v)
        if isinstance(self.means_seed, bool) or int(self.means_seed) != self.means_seed:
            raise ValueError(f"means_seed must be an integer, got {self.means_seed!r}")
        object.__setattr__(self, "means_seed", int(self.means_seed))
        mu = self.mu
        if isinstance(mu, (int, float)) and not isinstance(mu, bool):
            c = float(mu)
            if not math.isfinite(c):
                raise ValueError(f"mu must be finite, got {mu!r}")
            object.__setattr__(self, "mu", c)
        else:
            try:
                vec = tuple(float(m) for m in np.asarray(mu, dtype=np.float64).reshape(-1))
                ndim = np.ndim(mu)
            except (TypeError, ValueError) as e:
                raise ValueError(f"mu must be a number or a vector of {self.d} numbers, got {mu!r}") from e
            if ndim != 1 or len(vec) != self.d:
                raise ValueError(
                    f"mu has {len(vec)} entries (shape {np.shape(mu)}) but d = {self.d}; pass a scalar c "
                    f"(meaning c * 1_d) or a vector of length {self.d}"
                )
            if not all(math.isfinite(m) for m in vec):
                raise ValueError(f"every entry of mu must be finite, got {vec}")
            object.__setattr__(self, "mu", vec)

    # ----------------------------------------------------------------------------------------------
    # the means

    @cached_property
    def _means(self) -> torch.Tensor:
        d, K = self.d, self.components
        mu = torch.full((d,), float(self.mu), dtype=torch.float64) if isinstance(self.mu, float) else None
        if mu is None:
            mu = torch.tensor(self.mu, dtype=torch.float64)
        out = [mu]
        if K >= 2:
            out.append(-mu)
        pairs = (K - 1) // 2  # pairs beyond (+mu, -mu), the last one possibly unpartnered
        if K > 2:  # mean-zero pairs of seeded directions at the norm of mu
            r = torch.from_numpy(np.random.default_rng(self.means_seed).standard_normal((pairs, d)))
            r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-300)
            u = float(mu.norm()) * r
            for j in range(pairs):
                out.append(u[j])
                out.append(-u[j])
        return torch.stack(out[:K])

    @property
    def means(self) -> torch.Tensor:
        """The component means ``m_k``, shape ``(K, d)``, float64 (a copy)."""
        return self._means.clone()

    def component(self, label: int) -> GaussianMixture:
        """Component ``label`` alone, as a one-component mixture (the conditional ``P0(x | y = label)``)."""
        y = self._check_label_int(label)
        return GaussianMixture(d=self.d, mu=tuple(self._means[y].tolist()), components=1, variance=self.variance)

    def to_dict(self) -> dict:
        """The specification as plain JSON values (``GaussianMixture(**spec.to_dict())`` rebuilds it)."""
        return {
            "d": self.d,
            "mu": self.mu if isinstance(self.mu, float) else list(self.mu),
            "components": self.components,
            "variance": self.variance,
            "means_seed": self.means_seed,
        }

    # ----------------------------------------------------------------------------------------------
    # sampling

    def sample_with_labels(
        self, n: int, seed: int | torch.Generator = 0, *, dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples of P0 and their component labels.

        Parameters
        ----------
        n : int
            Number of samples (>= 0).
        seed : int or torch.Generator
            An integer seed; or a generator, from which one integer seed is drawn (the same generator
            state gives the same samples).
        dtype : torch.dtype
            ``torch.float64`` or ``torch.float32`` (the float64 draw rounded).

        Returns
        -------
        x : torch.Tensor, shape (n, d)
        labels : torch.Tensor, shape (n,), int64 in ``0 .. K-1``
            Row i of x is ``m_{labels[i]} + sqrt(v) z_i``; the first m rows do not depend on n.
        """
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
        if isinstance(seed, torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=seed))
        elif isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer or a torch.Generator, got {seed!r}")
        n = int(n)
        s_labels, s_noise = np.random.SeedSequence(int(seed)).spawn(2)
        u = np.random.default_rng(s_labels).random(n)
        labels = np.minimum((u * self.components).astype(np.int64), self.components - 1)
        z = np.random.default_rng(s_noise).standard_normal((n, self.d))
        y = torch.from_numpy(labels)
        x = self._means[y] + math.sqrt(self.variance) * torch.from_numpy(z)
        return x.to(dtype), y

    def sample(self, n: int, seed: int | torch.Generator = 0, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` samples of P0, shape ``(n, d)`` (see :meth:`sample_with_labels`)."""
        return self.sample_with_labels(n, seed, dtype=dtype)[0]

    # ----------------------------------------------------------------------------------------------
    # density and score

    def log_prob(self, x: torch.Tensor, label: torch.Tensor | int | None = None) -> torch.Tensor:
        """Exact ``log P0(x)`` (logsumexp over the components), or ``log P0(x | label)`` when a label is given.

        ``x`` has shape ``(..., d)``; the result has shape ``x.shape[:-1]``, float64.
        """
        return self._log_prob_at(self._check_x(x), 1.0, label)

    def log_prob_t(
        self, x: torch.Tensor, t: float | torch.Tensor, label: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Exact ``log P_t(x)`` of the mixture diffused to OU time t >= 0 (float64, shape ``x.shape[:-1]``)."""
        return self._log_prob_at(self._check_x(x), self._alpha_bar_of_t(t, x), label)

    def score(
        self, x: torch.Tensor, t: float | torch.Tensor = 0.0, label: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Exact score ``grad_x log P_t(x)`` at OU time t >= 0 (t = 0: the score of P0).

        Parameters
        ----------
        x : torch.Tensor, shape (..., d)
        t : float or torch.Tensor
            OU time, a number or a tensor broadcasting against ``x.shape[:-1]`` (one time per sample).
        label : int or torch.Tensor, optional
            A component label (or one per sample): the conditional score of that component.

        Returns
        -------
        torch.Tensor
            Shape and dtype of ``x`` (computed in float64).
        """
        x64 = self._check_x(x)
        return self._score_at(x64, self._alpha_bar_of_t(t, x), label).to(x.dtype)

    def eps(
        self,
        x: torch.Tensor,
        k: torch.Tensor | int,
        schedule: Schedule,
        label: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """The exact noise prediction ``-sqrt(1 - alpha_bar_k) grad log P_{t_k}(x)`` at step index k.

        ``k`` is an integer (or integer-valued float, as :func:`diffmem.sampling.ddim` passes it) or a
        tensor of shape ``x.shape[:-1]``; ``alpha_bar_k = schedule.alphas_cumprod[k]``. The result has the
        shape and dtype of ``x``.
        """
        if not isinstance(schedule, Schedule):
            raise TypeError("schedule must be a diffmem.schedule.Schedule (e.g. diffmem.schedule.linear())")
        x64 = self._check_x(x)
        kk = torch.as_tensor(k, device="cpu")
        if torch.is_floating_point(kk):
            if not torch.equal(kk, kk.round()):
                raise ValueError("step indices k must be integers")
            kk = kk.round()
        kk = kk.long()
        if bool((kk < 0).any()) or bool((kk >= schedule.T).any()):
            raise ValueError(f"step indices must lie in [0, {schedule.T - 1}]")
        ab = schedule.alphas_cumprod[kk].to(x64.device)  # broadcasts against x.shape[:-1]
        return (-(1.0 - ab).sqrt().unsqueeze(-1) * self._score_at(x64, ab, label)).to(x.dtype)

    def denoiser(self, schedule: Schedule, label: torch.Tensor | int | None = None):
        """The exact denoiser ``(x, k) -> eps`` for :func:`diffmem.sampling.ddim` (conditional with a label)."""

        def eps(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return self.eps(x, k, schedule, label)

        return eps

    # ----------------------------------------------------------------------------------------------
    # internals (float64)

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise ValueError("x must be a floating-point torch.Tensor of shape (..., d)")
        if x.ndim < 1 or x.shape[-1] != self.d:
            raise ValueError(f"x must have shape (..., {self.d}) for this mixture (d = {self.d}), got {tuple(x.shape)}")
        return x.to(torch.float64)

    def _check_label_int(self, label: int) -> int:
        if isinstance(label, bool) or int(label) != label or not 0 <= int(label) < self.components:
            raise ValueError(f"label must be an integer in [0, {self.components - 1}], got {label!r}")
        return int(label)

    def _labels(self, label: torch.Tensor | int, batch_shape: torch.Size, device: torch.device) -> torch.Tensor:
        y = torch.as_tensor(label, device=device)
        if torch.is_floating_point(y) or y.dtype == torch.bool:
            raise ValueError("labels must be integers")
        if bool((y < 0).any()) or bool((y >= self.components).any()):
            raise ValueError(f"labels must lie in [0, {self.components - 1}]")
        return y.long().expand(batch_shape)

    def _alpha_bar_of_t(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        if not bool(torch.isfinite(tt).all()) or bool((tt < 0).any()):
            raise ValueError(f"OU time t must be finite and >= 0, got {t!r}")
        return torch.exp(-2.0 * tt)

    def _log_prob_at(self, x: torch.Tensor, ab: torch.Tensor | float, label: torch.Tensor | int | None) -> torch.Tensor:
        """log P_t(x) with alpha_bar ``ab`` broadcasting against ``x.shape[:-1]``."""
        ab = torch.as_tensor(ab, dtype=torch.float64, device=x.device)
        vt = ab * self.variance + (1.0 - ab)  # broadcasts against x.shape[:-1]
        shifted = ab.sqrt()[..., None, None] * self._means.to(x.device)  # (..., K, d)
        logits = -((x.unsqueeze(-2) - shifted) ** 2).sum(-1) / (2 * vt.unsqueeze(-1))  # (..., K)
        norm = -0.5 * self.d * torch.log(2 * math.pi * vt)
        if label is not None:
            y = self._labels(label, logits.shape[:-1], x.device)
            return torch.gather(logits, -1, y.unsqueeze(-1)).squeeze(-1) + norm
        return torch.logsumexp(logits, dim=-1) - math.log(self.components) + norm

    def _score_at(self, x: torch.Tensor, ab: torch.Tensor | float, label: torch.Tensor | int | None) -> torch.Tensor:
        """grad log P_t(x) with alpha_bar ``ab`` broadcasting against ``x.shape[:-1]``."""
        ab = torch.as_tensor(ab, dtype=torch.float64, device=x.device)
        vt = (ab * self.variance + (1.0 - ab)).unsqueeze(-1)  # (..., 1)
        shifted = ab.sqrt()[..., None, None] * self._means.to(x.device)  # (..., K, d)
        if label is not None:
            y = self._labels(label, x.shape[:-1], x.device)
            shifted = shifted.expand(*x.shape[:-1], self.components, self.d)
            target = torch.gather(shifted, -2, y[..., None, None].expand(*y.shape, 1, self.d)).squeeze(-2)
            return (target - x) / vt
        logits = -((x.unsqueeze(-2) - shifted) ** 2).sum(-1) / (2 * vt)  # (..., K)
        r = torch.softmax(logits, dim=-1)
        return ((r.unsqueeze(-1) * shifted).sum(-2) - x) / vt
