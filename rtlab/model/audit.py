"""Checks the METHODS §4 properties on a tiny float64 copy of a config (used by `rtlab check`).

Each check runs exact-arithmetic style assertions (gradients that must be exactly zero, logits
that must be bit-identical) on a model with the same mode fields as the arm but a tiny shape, so
a whole arm is audited in a fraction of a second on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from rtlab.model.gpt import GPT, GPTConfig


@dataclass
class AuditResult:
    name: str
    passed: bool
    detail: str


def tiny_config(config: GPTConfig) -> GPTConfig:
    """Same training-mode fields, tiny shape, no dropout; long enough for every delay check."""
    r = config.reasoning
    T = max(6, 2 * r.delay + 2)
    tiny = {"vocab_size": min(config.vocab_size, 32), "block_size": T, "n_layer": 2, "n_head": 2,
            "n_embd": 16, "dropout": 0.0}
    return GPTConfig.model_validate({**config.model_dump(), **tiny})


def _inputs(config: GPTConfig, B: int, T: int, generator: torch.Generator):
    if config.head == "regression":
        x = torch.randn(B, T, config.n_features, generator=generator, dtype=torch.float64)
        y = torch.randn(B, T, generator=generator, dtype=torch.float64)
    else:
        x = torch.randint(0, config.vocab_size, (B, T), generator=generator)
        y = torch.randint(0, config.vocab_size, (B, T), generator=generator)
    return x, y


def _step_loss(model: GPT, logits: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
    """The loss of timestep t alone (main slot of step t)."""
    if model.config.head == "regression":
        return F.huber_loss(logits[:, t], y[:, t], delta=model.config.huber_delta, reduction="sum")
    return F.cross_entropy(logits[:, t], y[:, t], reduction="sum")


def step_loss_grad(model: GPT, x, y, t: int) -> torch.Tensor:
    """dL_t/dE for the loss at timestep t alone, as (B, T, n+1, C) (slot axis split out)."""
    E = model.embed(x).detach().requires_grad_(True)
    logits, _ = model(None, inputs_embeds=E)
    (grad,) = torch.autograd.grad(_step_loss(model, logits, y, t), E, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(E)
    B, P, C = E.shape
    n1 = model.config.slots_per_token
    return grad.view(B, P // n1, n1, C)


def check_leak(model: GPT, x, y) -> AuditResult:
    """§4.3: changing x_{t+1..} leaves logits of steps <= t bit-identical."""
    T = x.size(1)
    logits, _ = model(x)
    g = torch.Generator().manual_seed(1)
    for t in range(T - 1):
        x2 = x.clone()
        if model.config.head == "regression":
            x2[:, t + 1 :] = torch.randn(x2[:, t + 1 :].shape, generator=g, dtype=x.dtype)
        else:
            x2[:, t + 1 :] = (x2[:, t + 1 :] + 1) % model.config.vocab_size
        logits2, _ = model(x2)
        if not torch.equal(logits[:, : t + 1], logits2[:, : t + 1]):
            diff = (logits[:, : t + 1] - logits2[:, : t + 1]).abs().max().item()
            return AuditResult(
                "leak", False, f"changing x_{t + 1}.. moved logits of step <= {t} by {diff:.3g}"
            )
    return AuditResult("leak", True, f"logits of steps <= t bit-identical for all t < {T - 1}")


def check_myopic(model: GPT, x, y) -> list[AuditResult]:
    """§4.1: dL_j/dE_i == 0 exactly for i != j, nonzero at i == j; baseline has past gradient;
    myopic logits equal baseline logits."""
    T = x.size(1)
    results = []
    bad = None
    for j in range(T):
        per_pos = step_loss_grad(model, x, y, j).abs().sum(dim=(0, 2, 3))  # (T,)
        off = torch.cat([per_pos[:j], per_pos[j + 1 :]])
        if off.abs().max() != 0 or per_pos[j] == 0:
            bad = (
                f"position {j}: off-diagonal |grad| {off.max().item():.3g}, "
                f"diagonal {per_pos[j].item():.3g}"
            )
            break
    results.append(
        AuditResult(
            "myopic_gradient",
            bad is None,
            bad or f"dL_j/dE_i == 0 for i != j, nonzero at i == j (T={T})",
        )
    )

    baseline = _baseline_twin(model)
    per_pos = step_loss_grad(baseline, x, y, T - 1).abs().sum(dim=(0, 2, 3))
    past = per_pos[:-1].max().item()
    results.append(
        AuditResult(
            "baseline_has_past_gradient", past > 0, f"baseline max |dL_last/dE_past| = {past:.3g}"
        )
    )

    logits, _ = model(x)
    base_logits, _ = baseline(x)
    diff = (logits - base_logits).abs().max().item()
    results.append(
        AuditResult(
            "myopic_logits_equal_baseline",
            diff <= 1e-10,
            f"max |myopic - baseline| logits = {diff:.3g}",
        )
    )

    # §4.6: the two myopic implementations agree (where the fused kernel exists).
    explicit, fused = _impl_twin(model, "explicit"), _impl_twin(model, "fused")
    grads = []
    for m in (explicit, fused):
        m.zero_grad(set_to_none=True)
        _, loss = m(x, y)
        loss.backward()
        grads.append(
            [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in m.parameters()]
        )
    rel = max(
        ((a - b).abs().max() / a.abs().max().clamp_min(1e-300)).item()
        for a, b in zip(*grads, strict=True)
    )
    results.append(
        AuditResult(
            "myopic_fused_equals_explicit",
            rel <= 1e-9,
            f"max relative parameter-gradient difference {rel:.3g}",
        )
    )
    return results


def check_reasoning(model: GPT, x, y) -> list[AuditResult]:
    """§4.2 (delay) and §4.4 (no own loss)."""
    r = model.config.reasoning
    T = x.size(1)
    results = []
    bad = None
    for t in range(T):
        g = step_loss_grad(model, x, y, t).abs().sum(dim=(0, 3))  # (T, n+1)
        reasoning = g[:, 1:]  # (T, n)
        hidden = reasoning[max(0, t - r.delay + 1) :]
        if hidden.max() != 0:
            bad = f"loss of step {t} reaches a reasoning slot of a step > {t - r.delay}"
            break
        if t >= r.delay and reasoning[: t - r.delay + 1].max() == 0:
            bad = f"loss of step {t} reaches no reasoning slot of steps <= {t - r.delay}"
            break
    results.append(
        AuditResult(
            "reasoning_delay",
            bad is None,
            bad or f"delay {r.delay} respected at every step (T={T})",
        )
    )

    if not r.loss_on_reasoning:
        E = model.embed(x).detach().requires_grad_(True)
        _, loss = model(None, y, inputs_embeds=E)
        (grad,) = torch.autograd.grad(loss, E)
        B, P, C = E.shape
        tail = grad.view(B, T, r.n_tokens + 1, C)[:, T - r.delay :, 1:]
        worst = tail.abs().max().item()
        results.append(
            AuditResult(
                "no_own_loss",
                worst == 0,
                f"max |dL/dE| at reasoning slots of the last {r.delay} steps = {worst:.3g}",
            )
        )
    return results


def check_causal_gradient(model: GPT, x, y) -> AuditResult:
    T = x.size(1)
    per_pos = step_loss_grad(model, x, y, T - 1).abs().sum(dim=(0, 2, 3))
    past = per_pos[:-1].max().item()
    return AuditResult("gradient_flows_to_past", past > 0, f"max |dL_last/dE_past| = {past:.3g}")


def _twin(model: GPT, **fields) -> GPT:
    """The same weights under other mode fields: a GPT built from the changed config, so that its
    attention backend (chosen at construction) follows them too."""
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the caller's RNG
        twin = GPT(model.config.model_copy(update=fields))
    twin.to(device=param.device, dtype=param.dtype).load_state_dict(model.state_dict())
    return twin.set_attention_backend(model.attention_backend).train(model.training)


def _baseline_twin(model: GPT) -> GPT:
    return _twin(model, myopic="off")


def _impl_twin(model: GPT, impl: str) -> GPT:
    return _twin(model, myopic_impl=impl)


def audit_model(model: GPT, seed: int = 0) -> list[AuditResult]:
    """Runs every §4 check that applies to the model's mode. The model must be float64 and
    dropout-free for the exact-zero checks to mean anything."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x, y = _inputs(cfg, 2, cfg.block_size, g)
    was_training = model.training
    model.eval()
    try:
        results = [check_leak(model, x, y)]
        if cfg.myopic != "off":
            results += check_myopic(model, x, y)
        elif cfg.reasoning.n_tokens > 0:
            results += check_reasoning(model, x, y)
        else:
            results.append(check_causal_gradient(model, x, y))
    finally:
        model.train(was_training)
    return results


def audit_config(config: GPTConfig, seed: int = 0) -> list[AuditResult]:
    """Build a tiny float64 copy of `config` and run the METHODS §4 checks on it."""
    tiny = tiny_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(tiny).double()
    return audit_model(model, seed=seed)
