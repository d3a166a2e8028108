"""``bcfl e2e``: fault-injection scenarios on real validator processes (test tool).

Runs a manifest (``--manifest FILE``, TOML), one random scenario (``--random SEED``),
``--random-runs N`` random scenarios from ``--seed``, or the short CI suite (``--suite``).
As root with ``ip`` available, each validator gets its own network namespace (veth pairs,
a bridge, addresses in 198.18.0.0/15), and everything made is removed afterwards, also on
failure or Ctrl-C; otherwise it says why and runs the validators on 127.0.0.1 with
partitions emulated by the node's test-only fault layer. Prints each scenario's result,
writes a JSON report (``--report``), and exits 1 if any check found a violation.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType

from node.commands._common import EXIT_ERROR, EXIT_OK, CommandError, run
from node.e2e.hosts import (
    Hosts,
    HostsError,
    LoopbackHosts,
    NamespaceHosts,
    get_namespace_unavailable_reason,
)
from node.e2e.manifest import (
    CENSOR_REQUEST_TIMEOUT_TICKS,
    Manifest,
    ManifestError,
    Perturbation,
    generate_manifest,
    load_manifest,
)
from node.e2e.runner import Result, run_scenario

RUNS_MAX = 1000


def get_suite() -> list[Manifest]:
    """The short CI suite: crashes, partitions, slow/lossy links, Byzantine validators."""
    return [
        Manifest("crash-and-partition", duration_s=14, perturbations=(
            Perturbation(1.0, "kill", (0,), 2.0),          # the primary of view 0
            Perturbation(4.0, "split", (0, 1), 2.5),        # 2 | 2: no quorum anywhere
            Perturbation(7.5, "pause", (2,), 2.0),
            Perturbation(10.0, "wipe", (3,), 1.0),          # full catch-up from nothing
        )),
        Manifest("byzantine-equivocate-links", duration_s=12, byzantine={0: "equivocate"},
                 perturbations=(
            Perturbation(1.0, "slow", (1,), 3.0, rate_kbit=512),
            Perturbation(5.0, "lossy", (2,), 3.0, loss=0.2, delay_s=0.02),
            Perturbation(9.0, "isolate", (3,), 1.5),
        )),
        Manifest("byzantine-noise", duration_s=10, byzantine={1: "double_vote"},
                 perturbations=(Perturbation(2.0, "kill", (2,), 2.0),)),
        # The primary of view 0 proposes empty blocks only: the chain moves, no tx does,
        # until the backups' request timers replace it.
        Manifest("byzantine-censor", duration_s=10, byzantine={0: "censor"},
                 consensus={"request_timeout_ticks": CENSOR_REQUEST_TIMEOUT_TICKS}),
    ]


def get_broken_build_manifest() -> Manifest:
    """The primary (node 0) skips persisting its votes. It is made deaf (its peers' frames
    are lost; its own go out), so its peers commit its proposals while it delivers none;
    it is killed and restarted while still deaf, and re-proposes a seq it already proposed
    in the same view: a double PRE-PREPARE its honest peers must report as evidence. Slow
    view changes and rare checkpoints keep view 0 and the old slots alive meanwhile."""
    rounds = tuple(
        p for k in range(2) for p in (
            Perturbation(1.0 + 6.0 * k, "deafen", (0,), 4.5),
            Perturbation(1.6 + 6.0 * k, "kill", (0,), 0.1),
        ))
    return Manifest("broken-skip-persist", duration_s=14, skip_persist=(0,),
                    load_tx_per_s=40, perturbations=rounds, recovery_max_s=40,
                    consensus={"view_change_timeout_ticks": 200, "window": 128,
                               "checkpoint_interval": 64})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcfl e2e", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--manifest", type=Path, help="a scenario manifest (TOML)")
    what.add_argument("--random", type=int, metavar="SEED", help="one random scenario")
    what.add_argument("--random-runs", type=int, metavar="N", help="N random scenarios")
    what.add_argument("--suite", action="store_true", help="the short CI suite")
    what.add_argument("--broken-build", action="store_true",
                      help="the deliberately broken node (skip persist); must FAIL")
    parser.add_argument("--seed", type=int, default=0, help="first seed of --random-runs")
    parser.add_argument("--mode", choices=["auto", "netns", "loopback"], default="auto")
    parser.add_argument("--report", type=Path, default=Path("e2e-report.json"))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep node homes and logs here (default: a temporary dir)")
    return parser


def _get_manifests(args: argparse.Namespace) -> list[Manifest]:
    try:
        if args.manifest is not None:
            return [load_manifest(args.manifest)]
    except ManifestError as exc:
        raise CommandError(f"--manifest: {exc}") from None
    if args.random is not None:
        return [generate_manifest(args.random)]
    if args.random_runs is not None:
        if not 1 <= args.random_runs <= RUNS_MAX:
            raise CommandError(f"--random-runs: 1..{RUNS_MAX}")
        return [generate_manifest(args.seed + k) for k in range(args.random_runs)]
    if args.broken_build:
        return [get_broken_build_manifest()]
    return get_suite()


def make_hosts(mode: str, n: int, workdir: Path) -> Hosts:
    if mode in ("auto", "netns"):
        reason = get_namespace_unavailable_reason()
        if reason is None:
            try:
                return NamespaceHosts(n, workdir)
            except HostsError as exc:
                reason = str(exc)
        if mode == "netns":
            raise CommandError(f"network namespaces unavailable: {reason}")
        print(f"network namespaces unavailable ({reason}); running on 127.0.0.1 with "
              "partitions emulated by the node's fault layer")
    return LoopbackHosts(n, workdir)


def run_manifests(manifests: list[Manifest], mode: str, workdir: Path) -> list[Result]:
    results = []
    rng = random.Random()
    for k, manifest in enumerate(manifests):
        scenario_dir = workdir / f"{k:03d}-{manifest.name}"
        scenario_dir.mkdir(parents=True)
        print(f"scenario {manifest.name}: {manifest.validators} validators, "
              f"byzantine {manifest.byzantine or '-'}, {len(manifest.perturbations)} faults")
        hosts = make_hosts(mode, manifest.validators, scenario_dir)
        try:
            result = run_scenario(manifest, hosts, scenario_dir,
                                  rng.randrange(20_000, 50_000, 2))
        finally:
            hosts.close()
        verdict = "PASS" if result.passed else "FAIL"
        print(f"  {verdict} ({result.mode}) heights {result.heights} txs committed "
              f"{result.txs_committed}/{result.txs_submitted} recovery {result.recovery_s} s "
              f"evidence {result.evidence_against} in {result.wall_s} s")
        for violation in result.violations:
            print(f"  VIOLATION: {violation}")
        results.append(result)
    return results


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: processes, namespaces


def _e2e(args: argparse.Namespace) -> int:
    manifests = _get_manifests(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run_manifests(manifests, args.mode, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bcfl-e2e-") as tmp:
            results = run_manifests(manifests, args.mode, Path(tmp))
    failed = [r.name for r in results if not r.passed]
    report = {"scenarios": [r.to_json() for r in results], "failed": failed,
              "wall_s": round(time.monotonic() - started, 2)}
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(results) - len(failed)}/{len(results)} scenarios passed; report {args.report}")
    return EXIT_ERROR if failed else EXIT_OK


def main(argv: list[str]) -> int:
    return run("bcfl e2e", _e2e, build_parser(), argv)
