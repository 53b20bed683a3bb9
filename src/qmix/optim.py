"""The learner's optimisers on its one flat parameter: torch's RMSprop and Adam steps, without
``torch.optim``.

Building any ``torch.optim`` optimiser imports torch's compiler front end (``torch._dynamo``):
about a second when the first one is built and about as long again when the process exits,
for a learner that needs none of it. These classes take the same steps on one flat parameter
(see :func:`qmix.learner.flatten_parameters`):

- :class:`FlatRMSprop`: ``torch.optim.RMSprop`` without momentum, centring or weight decay (the
  single-tensor step: the same operations in the same order);
- :class:`FlatAdam`: ``torch.optim.Adam(fused=True)`` (torch's fused kernel, called directly;
  where this torch has none for the device, the single-tensor step's arithmetic).

Their ``state_dict()`` is a torch optimiser's, key for key, and ``load_state_dict`` takes one
(checkpoints written with ``torch.optim`` load here, and the other way round). ``state`` maps the
parameter to its state, as in torch, for the learner's snapshots.
"""

from __future__ import annotations

import math

import torch

from qmix.errors import QmixError


class FlatOptimizer:
    """One parameter, one group; subclasses define ``_init_state`` and ``_update``."""

    # Hyperparameters a torch optimiser of this kind records in its group; those named in
    # ``_fixed`` must keep these values (this class implements no other).
    group_defaults: dict = {}
    _fixed: tuple[str, ...] = ()

    def __init__(self, param: torch.Tensor, **hyper):
        self.param = param
        self.param_groups = [{**self.group_defaults, **hyper, "params": [param]}]
        self.state: dict[torch.Tensor, dict] = {}

    @property
    def group(self) -> dict:
        return self.param_groups[0]

    @torch.no_grad()
    def step(self) -> None:
        state = self.state.get(self.param)
        if state is None:
            state = self.state[self.param] = self._init_state()
        self._update(self.param, self.param.grad, state, self.group)

    def _init_state(self) -> dict:
        raise NotImplementedError

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """As ``torch.optim.Optimizer.state_dict()``: the state's tensors by reference."""
        group = {k: v for k, v in self.group.items() if k != "params"} | {"params": [0]}
        state = self.state.get(self.param)
        return {"state": {0: dict(state)} if state else {}, "param_groups": [group]}

    def load_state_dict(self, saved: dict) -> None:
        """A torch optimiser's state dict of one parameter (its hyperparameters included, as
        torch restores them); tensors go to the parameter's device, steps stay float32."""
        groups = saved.get("param_groups", [])
        if len(groups) != 1 or len(groups[0].get("params", [])) != 1:
            raise QmixError("the saved optimiser state does not hold exactly one flat parameter.")
        group = {**self.group_defaults, **{k: v for k, v in groups[0].items() if k != "params"}}
        for key in self._fixed:
            if group.get(key) != self.group_defaults.get(key):
                raise QmixError(f"the saved optimiser state uses {key}={group.get(key)!r}, which "
                                f"{type(self).__name__} does not implement.")
        self.param_groups = [{**group, "params": [self.param]}]
        self.state.clear()
        entry = saved.get("state", {})
        entry = entry.get(0, next(iter(entry.values()), None)) if entry else None
        if entry:
            self.state[self.param] = {k: self._load_tensor(k, v) for k, v in entry.items()}

    def _load_tensor(self, key: str, value):
        if key == "step":
            return torch.as_tensor(value, dtype=torch.float32).clone().to(self._step_device())
        if isinstance(value, torch.Tensor):
            return value.to(device=self.param.device, dtype=self.param.dtype).clone()
        return value

    def _step_device(self) -> torch.device:
        return torch.device("cpu")


class FlatRMSprop(FlatOptimizer):
    group_defaults = {"lr": 1e-2, "momentum": 0, "alpha": 0.99, "eps": 1e-8, "centered": False,
                      "weight_decay": 0, "capturable": False, "foreach": False, "maximize": False,
                      "differentiable": False}
    _fixed = ("momentum", "centered", "weight_decay", "maximize", "capturable", "differentiable")

    def _init_state(self) -> dict:
        return {"step": torch.zeros((), dtype=torch.float32),
                "square_avg": torch.zeros_like(self.param, memory_format=torch.preserve_format)}

    def _update(self, param, grad, state, group) -> None:
        square_avg, alpha = state["square_avg"], group["alpha"]
        state["step"] += 1
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        param.addcdiv_(grad, square_avg.sqrt().add_(group["eps"]), value=-group["lr"])


class FlatAdam(FlatOptimizer):
    group_defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
                      "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                      "fused": True, "decoupled_weight_decay": False}
    _fixed = ("weight_decay", "amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")

    def __init__(self, param: torch.Tensor, **hyper):
        super().__init__(param, **hyper)
        self._fused = fused_adam_available(param)
        if not self._fused:
            self.group["fused"] = None

    def _step_device(self) -> torch.device:
        return self.param.device if self._fused else torch.device("cpu")  # as torch keeps it

    def _init_state(self) -> dict:
        zeros = torch.zeros_like(self.param, memory_format=torch.preserve_format)
        return {"step": torch.zeros((), dtype=torch.float32, device=self._step_device()),
                "exp_avg": zeros, "exp_avg_sq": zeros.clone()}

    def _update(self, param, grad, state, group) -> None:
        beta1, beta2 = group["betas"]
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        if self._fused:
            step += 1
            torch._fused_adam_([param], [grad], [exp_avg], [exp_avg_sq], [], [step], amsgrad=False,
                               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
                               maximize=False, grad_scale=None, found_inf=None)
            return
        # torch's single-tensor Adam step (amsgrad, weight decay and maximize off)
        step += 1
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        t = step.item()
        step_size = group["lr"] / (1 - beta1 ** t)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
        param.addcdiv_(exp_avg, denom, value=-step_size)


def fused_adam_available(param: torch.Tensor) -> bool:
    """Whether this torch has a fused Adam kernel for ``param``'s device and dtype (CPU: torch
    2.4 and later)."""
    if not hasattr(torch, "_fused_adam_"):
        return False
    p = torch.zeros(1, dtype=param.dtype, device=param.device)
    try:
        torch._fused_adam_([p], [torch.zeros_like(p)], [torch.zeros_like(p)], [torch.zeros_like(p)], [],
                           [torch.ones((), dtype=torch.float32, device=p.device)], amsgrad=False, lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False,
                           grad_scale=None, found_inf=None)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True
