r"""Adam as Burda, Grosse & Salakhutdinov's IWAE code runs it (``train.optimizer =
"adam_burda"``), for recipes that follow that code (``iwae_static`` / ``iwae_k1_faithful``).

The authors' ``optimizers.Adam`` (yburda/iwae, ``optimizers.py``) differs from
``torch.optim.Adam`` in three ways, each kept here:

1. the second moments start at **one**, not zero (the first moments at zero);
2. ε is added to :math:`\sqrt{v}` *before* the bias correction, which is folded into the step
   size :math:`\alpha_t = \eta \sqrt{1 - \beta_2^t} / (1 - \beta_1^t)` with the step counter t
   starting at 1;
3. the update is one Theano function whose right-hand sides all read the values *before* the
   call, so step t moves the parameters with the moments of step t − 1 (the first step does not
   move them, :math:`m_0 = 0`):

.. math::

    \theta_t = \theta_{t-1} - \alpha_t \, \frac{m_{t-1}}{\sqrt{v_{t-1}} + \varepsilon}, \qquad
    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,

with :math:`g_t` the gradient of the loss (the code ascends the bound; the signs agree). With
:math:`v_0 = 1` and :math:`\beta_2 = 0.999`, the first steps are far shorter than torch's Adam's
(about :math:`\eta \sqrt{1-\beta_2^t} \, |g|` instead of :math:`\eta`), a built-in warm-up. The
optimizer persists across the learning-rate stages in the code (one ``Adam`` object, its
``learning_rate`` reassigned per stage), as :class:`BurdaAdam` does across epochs here.
"""

from __future__ import annotations

import math

import torch

__all__ = ["BurdaAdam"]


class BurdaAdam(torch.optim.Optimizer):
    """The update of yburda/iwae's ``optimizers.Adam`` (module docstring), on torch tensors.

    :param params: the parameters.
    :param lr: η (the schedule sets it per step through ``param_groups``).
    :param betas: (β1, β2); the code's defaults are (0.99, 0.999).
    :param eps: ε, added to √v (the code: 1e-4).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.99, 0.999),
                 eps: float = 1e-4):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        #: set by :class:`~vaelab.runs.stepper.Stepper` on the device path: a nonzero value
        #: skips the step (as torch's fused optimizers do)
        self.found_inf: torch.Tensor | None = None

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(1.0)  # the code's timestep starts at 1
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.ones_like(p)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        if self.found_inf is not None and bool(self.found_inf):
            return loss
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                alpha = group["lr"] * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-alpha)  # old m, v
                m.mul_(b1).add_(p.grad, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
                state["step"] += 1.0
        return loss
