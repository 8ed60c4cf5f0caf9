"""Where NBA's gradient goes at the start of a defense, and whether its pseudo samples expose the
backdoor: the probe behind docs/FIDELITY.md.

    python -m nba_scale.diagnose --dataset npz:~/.cache/nba_scale/cifar10_jpeg.npz --attack badnets sig \\
        --preset quick --set data.train_subset=10000 --set data.test_subset=2000 [--batches 8] [--json F]

For each attack, from the artifact cache (built if missing, as a trial would): the backdoored model
(NBA's student at its first step) and the teacher. Over `--batches` clean batches of the defense's
batch size, the norm of the gradient w.r.t. the student's parameters of each part of NBA's loss
as the defense weights it: CE; α·λ1·RNB, α·λ2·LNB, α·λ3·PNB of LDL; α·β·λ·(term) of UDL; the
total. Then the clip: the factor min(1, clip / ‖total‖) the optimiser applies, and CE's norm after
it (what is left of the task's own step). `--set nba.lambda1=0.05` etc. probe other settings.

PGD -> target: the fraction of non-target test images that the defense's PGD (untargeted, its ε
and steps) sends to the attack's target class, on the backdoored model and on the teacher (a
clean-ish model): pseudo samples expose the backdoor only where the first is well above the
second. The trigger's own rate (ASR) is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import torch
import torch.nn.functional as F

from . import cli


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m nba_scale.diagnose", __doc__)
    cli.add_trial_flags(p, dataset="synthetic", preset="quick")
    p.add_argument("--attack", nargs="+", default=["badnets"])
    p.add_argument("--clean-fraction", type=float, default=None, help="defender's clean subset (default 0.05)")
    p.add_argument("--batches", type=cli.count, default=8, help="clean batches averaged over")
    p.add_argument("--pgd-images", type=cli.count, default=1000, help="non-target test images for PGD -> target")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def config_for(args: argparse.Namespace, attack: str) -> dict[str, Any]:
    trial = {"attack": attack, "defense": "nba", "seed": args.seed}
    if args.clean_fraction is not None:
        trial["clean_fraction"] = args.clean_fraction
    sets = cli.user_set(args)
    cfg = cli.trial_config(cli.base_config(args), trial, sets, preset=args.preset)
    cli.check_run([cfg], sets)
    return cfg


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def gradient_budget(student, teacher, x_clean, y_clean, nba, batch_size: int, batches: int, seed: int
                    ) -> dict[str, float]:
    """Means over `batches` of the gradient norm of each weighted part of NBA's loss, the total's,
    the clip factor and CE's norm after the clip (the module's docstring)."""
    from .defenses.nba_losses import behaviour_loss

    c = nba.cfg
    weights = {"rnb": c.lambda1, "lnb": c.lambda2, "pnb": c.lambda3}
    kw = dict(weights={k: 1.0 for k in weights}, T=c.T, terms=c.terms, representation=c.representation,
              kd_t2=c.kd_t2)
    params = [q for q in student.parameters() if q.requires_grad]
    order = torch.randperm(len(x_clean), generator=torch.Generator().manual_seed(seed))
    rows: list[dict[str, float]] = []
    student.train()
    for b in range(min(batches, len(x_clean) // batch_size)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x, y = x_clean[idx].float().div(255), y_clean[idx]
        with torch.no_grad():
            logits_t, feats_t = teacher(x, features=True)
        logits_s, feats_s = student(x, features=True)
        ce = F.cross_entropy(logits_s, y)
        _, ldl = behaviour_loss(feats_t, logits_t, feats_s, logits_s, **kw)
        x_u = c.pseudo_sample(student, x, y)
        logits_u, feats_u = student(x_u, features=True)
        _, udl = behaviour_loss(feats_t, logits_t, feats_u, logits_u, **kw)
        parts = {"ce": ce}
        parts.update({f"ldl_{k}": c.alpha * weights[k] * v for k, v in ldl.items()})
        parts.update({f"udl_{k}": c.alpha * c.beta * weights[k] * v for k, v in udl.items()})
        total = sum(parts.values())
        row = {f"{k}_grad": grad_norm(v, params) for k, v in parts.items()}
        row.update({f"{k}_value": float(v.detach()) for k, v in parts.items()})
        row["total_grad"] = grad_norm(total, params)
        clip = c.optim.grad_clip
        row["clip_factor"] = min(1.0, clip / row["total_grad"]) if clip and row["total_grad"] > 0 else 1.0
        row["ce_grad_after_clip"] = row["ce_grad"] * row["clip_factor"]
        rows.append(row)
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]} | {"batches": len(rows)}


def pgd_to_target(model, x, y, target: int, eps: float, steps: int, step_size: float) -> float:
    """The fraction of (non-target) images that untargeted PGD sends to `target`."""
    from .adversarial import pgd_untargeted

    hits = 0
    for i in range(0, len(x), 256):
        xb = x[i:i + 256].float().div(255)
        adv = pgd_untargeted(model, xb, y[i:i + 256], eps, steps, step_size)
        with torch.no_grad():
            hits += int((model.eval()(adv).argmax(1) == target).sum())
    return hits / max(1, len(x))


def diagnose(cfg_dict: dict[str, Any], batches: int, pgd_images: int) -> dict[str, Any]:
    from .defenses import get_defense
    from .trial import student_and_teacher

    s, model, before, teacher, teacher_metrics = student_and_teacher(cfg_dict)  # seeds the run (setup_run)
    cfg = s.cfg
    model, teacher = model.to("cpu").float(), teacher.to("cpu").float().eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    nba = get_defense("nba")(cfg.defense_params)
    x_clean, y_clean = s.clean_subset
    out: dict[str, Any] = {"attack": cfg.attack, "dataset": cfg.dataset, "asr_before": before["asr"],
                           "ba_before": before["ba"], "teacher_asr": teacher_metrics["asr"],
                           "teacher_ba": teacher_metrics["ba"], "n_clean": len(x_clean),
                           "config": {k: getattr(nba.cfg, k) for k in ("lambda1", "lambda2", "lambda3", "T", "alpha",
                                                                        "beta", "kd_t2", "pgd_eps", "pgd_steps")}
                           | {"grad_clip": nba.cfg.optim.grad_clip}}
    out.update(gradient_budget(model, teacher, x_clean, y_clean, nba, nba.cfg.optim.batch_size, batches, cfg.seed))
    target = s.attack.params.target
    keep = (s.ds.y_test != target).nonzero().flatten()[:pgd_images]
    x, y = s.ds.x_test[keep], s.ds.y_test[keep]
    c = nba.cfg
    for name, m in (("backdoored", model), ("teacher", teacher)):
        out[f"pgd_to_target_{name}"] = pgd_to_target(m, x, y, target, c.pgd_eps, c.pgd_steps, c.step_size)
    out["pgd_images"] = len(x)
    return out


def format_table(results: list[dict[str, Any]]) -> str:
    parts = ["ce"] + [f"{p}_{t}" for p in ("ldl", "udl") for t in ("rnb", "lnb", "pnb")]
    head = "| part of the loss (weighted) | " + " | ".join(r["attack"] for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for p in parts:
        if all(f"{p}_grad" in r for r in results):
            lines.append(f"| ‖∇ {p.replace('_', ' ').upper()}‖ | " + " | ".join(f"{r[f'{p}_grad']:.3g}" for r in results) + " |")
    for key, label, fmt in (("total_grad", "‖∇ total‖", "{:.3g}"), ("clip_factor", "clip factor", "{:.3f}"),
                            ("ce_grad_after_clip", "‖∇ CE‖ after the clip", "{:.3g}"),
                            ("asr_before", "trigger -> target (ASR), backdoored", "{:.1%}"),
                            ("teacher_asr", "trigger -> target (ASR), teacher", "{:.1%}"),
                            ("pgd_to_target_backdoored", "PGD -> target, backdoored", "{:.1%}"),
                            ("pgd_to_target_teacher", "PGD -> target, teacher", "{:.1%}")):
        lines.append(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in results) + " |")
    c = results[0]["config"]
    lines.append(f"\n{results[0]['batches']} batches; λ = {c['lambda1']:g}, {c['lambda2']:g}, {c['lambda3']:g}; "
                 f"T = {c['T']:g}; α = {c['alpha']:g}; β = {c['beta']:g}; clip {c['grad_clip']}; PGD ε = "
                 f"{c['pgd_eps'] * 255:.0f}/255, {c['pgd_steps']} steps, on {results[0]['pgd_images']} non-target images")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    configs = [config_for(args, a) for a in args.attack]  # every attack's input checked first
    results = []
    for cfg in configs:
        print(f"[{cfg['attack']}] artifacts (cache), {args.batches} batches, PGD on {args.pgd_images} images ...",
              file=sys.stderr, flush=True)
        results.append(diagnose(cfg, args.batches, args.pgd_images))
    print(format_table(results))
    if args.json:
        from .atomic import atomic_write

        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=1, default=str))
    return 0


main = cli.entry(build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
