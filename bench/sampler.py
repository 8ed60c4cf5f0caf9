"""Which Optuna sampler settings reach the best front for a sweep's budget? On a cheap surrogate.

    python bench/sampler.py [--budgets 8 16 32 64] [--seeds 10] [--concurrency 2] [--noise 0.01]

A real NBA trial costs a minute; this compares samplers on a stand-in with the same search
space (`search_spaces/nba.yaml`, 7 log-scaled parameters) and the same two objectives (ASR down,
BA up), asked and told in batches of `--concurrency` as a Tune sweep with that many trials at
once (or a pack) does, the paper default evaluated first. The surrogate, in each parameter's
log-position u in [0, 1]: the distillation strength s = mean(u_alpha, u_beta, u_lambda1,
u_pgd_eps) removes the backdoor (ASR = sigmoid(12 (0.55 - s)) plus a penalty where T is far from
its middle) and costs accuracy (BA = 0.80 - 0.30 s^2 - 0.08 (u_lambda2 - 0.3)^2 - 0.04 u_lambda3),
plus Gaussian noise of `--noise` on both: a trade-off front, as the CIFAR-10 sweeps show, with
parameters that matter and some that barely do. Prints the mean (and std) hypervolume of the
(ASR, BA) front per sampler and budget (`store.hypervolume`, reference ASR 1, BA 0).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import optuna

from nba_scale.sweep.search_space import load_search_space
from nba_scale.sweep.store import hypervolume
from nba_scale.sweep.study import tpe_startup_trials

SPACE = load_search_space(Path(__file__).resolve().parent.parent / "search_spaces" / "nba.yaml")


def position(p, value: float) -> float:
    return (math.log(value) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))


def surrogate(point: dict[str, float], rng: np.random.Generator, noise: float) -> tuple[float, float]:
    u = {p.name.split(".")[1]: position(p, point[p.name]) for p in SPACE.params}
    s = (u["alpha"] + u["beta"] + u["lambda1"] + u["pgd_eps"]) / 4
    asr = 1 / (1 + math.exp(-12 * (0.55 - s))) + 0.3 * (u["T"] - 0.5) ** 2
    ba = 0.80 - 0.30 * s ** 2 - 0.08 * (u["lambda2"] - 0.3) ** 2 - 0.04 * u["lambda3"]
    return float(np.clip(asr + rng.normal(0, noise), 0, 1)), float(np.clip(ba + rng.normal(0, noise), 0, 1))


def samplers(budget: int, concurrency: int, seed: int) -> dict[str, optuna.samplers.BaseSampler]:
    return {
        "random": optuna.samplers.RandomSampler(seed=seed),
        "tpe (Optuna defaults: 10 random first)": optuna.samplers.TPESampler(seed=seed, multivariate=True),
        "tpe (nba_scale: startup from the budget, constant liar)": optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=tpe_startup_trials(budget),
            constant_liar=concurrency > 1),
        "nsga2": optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, budget // 4))),
    }


def run(sampler, budget: int, concurrency: int, seed: int, noise: float) -> float:
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    study.enqueue_trial(SPACE.default_config())
    rng = np.random.default_rng(seed)
    dists = SPACE.optuna_space()
    told = 0
    while told < budget:
        batch = [study.ask(dists) for _ in range(min(concurrency, budget - told))]
        for trial in batch:
            study.tell(trial, surrogate(trial.params, rng, noise))
        told += len(batch)
    done = [t.values for t in study.trials if t.values]
    return hypervolume([v[0] for v in done], [v[1] for v in done])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--noise", type=float, default=0.01)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = list(samplers(8, 1, 0))
    print(f"hypervolume of the (ASR, BA) front, mean ± std over {args.seeds} seeds; {args.concurrency} "
          f"trials asked at once; surrogate noise {args.noise}\n")
    print("| sampler | " + " | ".join(f"{b} trials" for b in args.budgets) + " |")
    print("|---|" + "---|" * len(args.budgets))
    table = {n: [] for n in names}
    for budget in args.budgets:
        for name in names:
            hv = [run(samplers(budget, args.concurrency, seed)[name], budget, args.concurrency, seed, args.noise)
                  for seed in range(args.seeds)]
            table[name].append(f"{np.mean(hv):.4f} ± {np.std(hv):.4f}")
    for name in names:
        print(f"| {name} | " + " | ".join(table[name]) + " |")


if __name__ == "__main__":
    main()
