"""``bcfl robustness``: accuracy of each aggregation rule under each attack, as JSON and a PNG.

The computation is ``fl.robustness.run_robustness`` (pure); this module parses
arguments, writes ``robustness.json`` and ``robustness.png`` (matplotlib, Agg
backend) under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from fl.robustness import ATTACKS, DEFAULT_RULES, RobustnessConfig, run_robustness

QUICK_RULES = ("mean", "median", "krum")
QUICK_ATTACKS = ("none", "sign_flip")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bcfl robustness", description=__doc__)
    p.add_argument("--out", default="out/robustness", help="output directory")
    p.add_argument("--quick", action="store_true", help="3 rules x 2 attacks x 5 rounds (tests)")
    p.add_argument("--clients", type=int, default=15)
    p.add_argument("--byzantine", type=int, default=3)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label-skew concentration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rules", default=",".join(DEFAULT_RULES))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    return p


def _plot(report: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    assert isinstance(results, dict)
    attacks = list(results)
    rules = list(results[attacks[0]])
    fig, ax = plt.subplots(figsize=(max(8, len(attacks) * 1.1), 5))
    colors = [plt.get_cmap("tab20")(k / 20) for k in range(20)]
    width = 0.8 / max(1, len(rules))
    for k, rule in enumerate(rules):
        accs = [float(results[a][rule].get("accuracy", 0.0)) for a in attacks]
        ax.bar(
            [i + k * width for i in range(len(attacks))],
            accs,
            width,
            label=rule,
            color=colors[k % len(colors)],
        )
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(attacks))], attacks, rotation=30, ha="right"
    )
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.axhline(float(report["centralised_accuracy"]), color="k", ls="--", lw=1, label="centralised")  # type: ignore[arg-type]
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Robust aggregation on breast cancer data (label skew)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_table(report: dict[str, object]) -> None:
    results = report["results"]
    assert isinstance(results, dict)
    attacks = list(results)
    rules = list(results[attacks[0]])
    print("attack".ljust(18) + "".join(r[:11].rjust(12) for r in rules))
    for a in attacks:
        cells = []
        for r in rules:
            cell = results[a][r]
            cells.append(
                f"{cell['accuracy']:.3f}".rjust(12) if "accuracy" in cell else "n/a".rjust(12)
            )
        print(a.ljust(18) + "".join(cells))
    backdoor = results.get("model_replacement", {})
    if backdoor:
        cells = [
            f"{backdoor[r].get('backdoor_success', float('nan')):.3f}".rjust(12) for r in rules
        ]
        print("backdoor success".ljust(18) + "".join(cells))
    print(f"centralised accuracy: {report['centralised_accuracy']:.3f}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    rules = tuple(r for r in args.rules.split(",") if r)
    attacks = tuple(a for a in args.attacks.split(",") if a)
    try:
        config = RobustnessConfig(
            n_clients=args.clients,
            n_byzantine=args.byzantine,
            rounds=args.rounds,
            alpha=args.alpha,
            seed=args.seed,
            rules=rules,
            attacks=attacks,
        )
        if args.quick:
            config = replace(config, rounds=5, rules=QUICK_RULES, attacks=QUICK_ATTACKS)
    except ValueError as exc:
        print(f"bcfl robustness: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_robustness(config)
    except ValueError as exc:  # e.g. more hospitals than the data can give
        print(f"bcfl robustness: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    _plot(report, out / "robustness.png")
    _print_table(report)
    print(f"wrote {out / 'robustness.json'} and {out / 'robustness.png'}")
    return 0
