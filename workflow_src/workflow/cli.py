"""``python -m workflow_src [--config params.yaml ...] [--threads N] COMMAND --option value ...``

One command per workflow stage, built from the stage declarations (:mod:`.stages`): Snakemake
rules and DVC stages call exactly these.  Every invocation validates the merged params before
doing anything; the stage's module (and torch with it) is imported only then."""
from __future__ import annotations

import argparse
import importlib
import os
import resource
import sys
from typing import Any, Dict, List, Optional

from .. import config as config_mod
from ..config import trace
from . import forkserver
from .stages import COMMANDS, RESOURCES_MARK, STARTUP_MARK, WILDCARDS, Stage, option, resources_problems

PARAMS_ENV = "QGAN_PARAMS"  # the resolved params file the workflow's jobs read (rules/common.smk)


def _common_options(after_command: bool) -> argparse.ArgumentParser:
    """--config and --threads, accepted before COMMAND and after it (there, given ones replace those
    given before; absent ones leave them as they were)."""
    keep = argparse.SUPPRESS if after_command else None
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--config", action="append", default=keep,
                   help="params YAML; repeat to merge overrides (default: $QGAN_PARAMS, the workflow's resolved params, else params.yaml)")
    c.add_argument("--threads", type=int, default=keep or 1, help="torch intra-op threads (Snakemake's {threads}; default 1)")
    return c


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_src", description=__doc__, parents=[_common_options(False)],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for st in COMMANDS.values():
        sp = sub.add_parser(st.command, help=st.help, description=f"{st.help} (rule {st.name})" if st.rule else st.help,
                            parents=[_common_options(True)])
        for name, (kind, a) in st.arguments().items():
            if a is None:
                sp.add_argument(option(name), dest=name, required=True, help=WILDCARDS[name], **({"type": _seed} if name == "seed" else {}))
            elif a.many:
                sp.add_argument(option(name), dest=name, nargs="*" if a.optional else "+", default=[], required=not a.optional,
                                help=f"{kind}: {a.help}")
            else:
                sp.add_argument(option(name), dest=name, required=not a.optional, default=None, help=f"{kind}: {a.help}")
    return p


def _function(st: Stage):
    module, function = st.run.split(":")
    return getattr(importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.{module}"), function)


def _seed(text: str) -> int:
    """The --seed of a replicate's job: a non-negative integer."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--seed {text!r}: a replicate's seed is a non-negative integer (params seeds:)")
    return int(text)


def replicate(cfg: Dict[str, Any], st: Stage, args: Dict[str, Any]) -> Dict[str, Any]:
    """The params a job of ``st`` computes with: for a replicate's stage (wildcard ``seed``), ``seed``
    set to its --seed, so that every seeded draw of the stage is that replicate's."""
    return {**cfg, "seed": args["seed"]} if "seed" in st.wildcards else cfg


def run(st: Stage, cfg: Dict[str, Any], args: Dict[str, Any]) -> Any:
    """Call the stage's function with the params and its named artifacts."""
    return _function(st)(replicate(cfg, st, args), **{name: args[name] for name in st.function_arguments()})


def _resources() -> str:
    """This process's CPU seconds and peak memory so far, its finished children's included (for a
    forked job: since the fork, which Snakemake's benchmark cannot see)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    line = f"{RESOURCES_MARK} cpu {cpu:.2f} s, peak rss {max(me.ru_maxrss, kids.ru_maxrss) / 1024:.1f} MB"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # the job computed on a GPU: its peak there (scripts/gpu-check.sh)
        peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
        line += f", peak gpu {peak / 2**20:.1f} MB"
    return line


def validate(cfg: Dict[str, Any]) -> None:
    """The ``validate`` command: the params passed; print the experiment matrix."""
    print(f"params OK: profile {cfg['profile']}, archs {cfg['matrix']['archs']}")
    for v in config_mod.variants(cfg):
        print("  ", v.name)


def main(argv: Optional[List[str]] = None) -> int:
    args = vars(_parser().parse_args(argv))
    try:
        cfg = config_mod.load(args["config"] or [os.environ.get(PARAMS_ENV) or "params.yaml"], extra_checks=[resources_problems])
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    st = COMMANDS[args["command"]]
    if st.rule:  # a stage: torch is imported only now, never for --help, bad params, validate or dvc-yaml
        from ..utils import set_threads

        set_threads(args["threads"])
        fn = _function(st)  # the stage's module, with torch and what else it needs
        forked = " (forked by the warm process)" if os.environ.get(forkserver.STARTED_ENV) else ""
        print(f"{STARTUP_MARK} {forkserver.seconds_since_start():.2f} s after the process started{forked}", flush=True)
        trace_dir, reads, cfg = os.environ.get(trace.TRACE_ENV), set(), replicate(cfg, st, args)
        fn(trace.Traced(cfg, reads) if trace_dir else cfg, **{name: args[name] for name in st.function_arguments()})
        if trace_dir:  # which params keys the stage read (tests/test_workflow.py checks them against its declaration)
            wildcards = {w: str(args[w]) for w in st.wildcards}
            if "seed" in st.wildcards:  # its seed is its wildcard, not a params read
                reads = {k for k in reads if k != "seed"}
            trace.write_reads(trace_dir, st.log.format(**wildcards)[len("logs/"):-len(".log")], st.name, wildcards, reads)
        print(_resources(), flush=True)
        return 0
    run(st, cfg, args)
    return 0
