"""Stages are declared once (workflow_src/workflow/stages.py): every rule of the Snakefile is a
declared stage, every stage function takes exactly its declared artifacts by name, and the CLI is
built from the declarations (help for every command and option, options in any order)."""
from __future__ import annotations

import importlib
import inspect
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_src.workflow import cli, stages

ROOT = Path(__file__).resolve().parents[1]


def test_every_rule_is_a_declared_stage_and_listed_with_what_it_does():
    """`snakemake --list-rules` shows every rule with a description: a stage's is its command's help."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--list-rules"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = dict(m.groups() for m in re.finditer(r"^(\w+) \((.+)\)$", proc.stdout, re.M))
    assert set(listed) - {"all"} == set(stages.STAGES) and listed["all"]
    assert all(listed[r] == stages.stage(r).help for r in stages.STAGES)


@pytest.mark.parametrize("command", sorted(stages.COMMANDS))
def test_stage_functions_take_the_declared_artifacts(command):
    st = stages.COMMANDS[command]
    module, function = st.run.split(":")
    fn = getattr(importlib.import_module(f"workflow_src.{module}"), function)
    sig = inspect.signature(fn)
    names = list(sig.parameters)
    assert names[0] == "cfg", command
    keyword = {n: p for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
    declared = {n: st.arguments()[n] for n in st.function_arguments()}  # a replicate's --seed reaches it as params seed
    assert set(declared) <= set(keyword), (command, set(declared) - set(keyword))
    assert "seed" not in keyword, command
    # what the declaration leaves out the function must not need (quantize and qat share one function)
    assert all(p.default is not inspect.Parameter.empty for n, p in keyword.items() if n not in declared), command
    for name, (kind, a) in declared.items():
        if a is not None and a.optional and not a.many:  # an optional input may be left out of the command
            assert keyword[name].default is None, (command, name)


def test_every_command_and_option_has_help():
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(stages.COMMANDS)
    for name, sp in sub.choices.items():
        assert stages.COMMANDS[name].help
        for action in sp._actions:
            assert action.help, f"{name} {action.option_strings}: no help"


def test_options_come_in_any_order():
    st = stages.COMMANDS["quantize"]
    pairs = [[stages.option(n), "7" if n == "seed" else f"v-{n}"] for n in st.arguments() if n != "quantiles"]
    orders = [list(pairs), list(reversed(pairs))] + [random.Random(seed).sample(pairs, len(pairs)) for seed in range(3)]
    parsed = [vars(cli._parser().parse_args(["quantize"] + [x for p in order for x in p])) for order in orders]
    assert all(p == parsed[0] for p in parsed) and parsed[0]["quantiles"] is None and parsed[0]["model"] == "v-model"
    assert parsed[0]["seed"] == 7


@pytest.mark.parametrize("argv", [["--config", "a.yaml", "--config", "b.yaml", "--threads", "3", "validate"],
                                  ["validate", "--config", "a.yaml", "--threads", "3", "--config", "b.yaml"],
                                  ["--threads", "3", "validate", "--config", "a.yaml", "--config", "b.yaml"],
                                  ["--config", "x.yaml", "--threads", "3", "validate", "--config", "a.yaml", "--config", "b.yaml"]])
def test_config_and_threads_come_before_or_after_the_command(argv):
    """The help shows `COMMAND --config ...`, so both places work; given after COMMAND they replace
    what came before it."""
    args = vars(cli._parser().parse_args(argv))
    assert args["config"] == ["a.yaml", "b.yaml"] and args["threads"] == 3 and args["command"] == "validate"
    assert vars(cli._parser().parse_args(["validate"]))["config"] is None and vars(cli._parser().parse_args(["validate"]))["threads"] == 1


@pytest.mark.parametrize("seed", ["x", "-1", "1.5"])
def test_a_replicates_seed_is_a_non_negative_integer(seed, capsys):
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["eval-inputs", "--seed", seed, "--arch", "sagan", "--data", "d", "--out", "o"])
    assert f"--seed {seed!r}: a replicate's seed is a non-negative integer" in capsys.readouterr().err


def test_a_replicates_job_computes_with_its_own_seed():
    """The CLI hands a replicate's stage the params with ``seed`` set to its --seed; a shared stage gets them as they are."""
    cfg = {"seed": 0, "seeds": [0, 7]}
    assert cli.replicate(cfg, stages.stage("train_fp"), {"seed": 7, "arch": "sagan"})["seed"] == 7
    assert cli.replicate(cfg, stages.stage("train_features"), {})["seed"] == 0 and cfg["seed"] == 0


def test_shell_lines_pass_every_artifact_by_name():
    st = stages.stage("qat")
    line = st.shell()
    # every path shell-quoted (:q); optional inputs come quoted in their params entry
    assert line.startswith("python -m workflow_src --threads {threads} qat ")  # the params: $QGAN_PARAMS
    assert "--arch {wildcards.arch:q}" in line and "--fp {input.fp:q}" in line and "--losses {output.losses:q}" in line
    assert "{params.opt_quantiles}" in line and "{params.opt_perceptual}" in line and line.endswith("> {log:q} 2>&1")
    assert stages.stage("train_fp").log == "logs/train_fp/s{seed}/{arch}.log" and stages.stage("report").log == "logs/report.log"
    assert "--seed {wildcards.seed:q}" in line and "--seed " not in stages.stage("report").shell()
    assert "--losses" not in stages.stage("train_fp").shell()  # written beside the model, not an option


def test_paths_that_depend_on_the_params():
    from workflow_src import config as qcfg

    cfg = qcfg.load([ROOT / "params.yaml"])
    w = {"seed": "3", "arch": "cyclegan", "variant": "ptq-minmax-tensor-w4a8"}
    assert stages.real_statistics(cfg, w) == "stats/h2z-synthetic-testB.npz"
    assert stages.arch_data(cfg, w) == "data/h2z-synthetic"
    assert stages.sweep_best(cfg, w) == [] and stages.perceptual_network(cfg, w) == []
    w["variant"] = "lsq-qat-tensor-w4a8"
    assert stages.sweep_best(cfg, w) == "sweeps/s3/cyclegan/best.json"
    cfg["archs"]["cyclegan"]["qat"]["distill_loss"] = "perceptual"
    assert stages.perceptual_network(cfg, w) == "resources/perceptual/tinyvgg.pt"
    cfg["archs"]["cyclegan"]["qat"]["distill_loss"] = "mse"  # the appendix B loss (the tiny CycleGAN's) needs no perceptual network
    assert stages.perceptual_network(cfg, w) == []
    for select_on, planned in (("loss", ([], [])), ("qfid", ("resources/features/tinycnn.pt", "data/h2z-synthetic"))):
        cfg["archs"]["cyclegan"]["qat"].update(select="best", select_on=select_on)  # a validation qFID reads the feature network and the dataset
        assert (stages.validation_features(cfg, w), stages.validation_data(cfg, w)) == planned, select_on
    cfg["archs"]["cyclegan"]["qat"]["select"] = "last"  # nothing is selected: nothing scored
    assert (stages.validation_features(cfg, w), stages.validation_data(cfg, w)) == ([], [])
    cfg["archs"]["cyclegan"]["qat"]["select"] = "best"
    w["variant"] = "ar-brecq-tensor-w4a8"  # methods without that need never read them
    assert (stages.validation_features(cfg, w), stages.validation_data(cfg, w)) == ([], [])


def test_the_sweep_reads_the_variant_list_of_the_matrix_not_its_archs():
    """Another arch joining the matrix reruns no other arch's sweep: the sweep reads the matrix only
    through the variant list (its weight widths), which the archs do not change."""
    import copy

    from workflow_src import config as qcfg
    from workflow_src.workflow import sweep

    cfg = qcfg.load([ROOT / "params.yaml", ROOT / "configs" / "micro.yaml"])
    keys = stages.param_keys(cfg, "quantile_sweep", {"arch": "sagan"})
    assert {"matrix.methods", "matrix.per_channel", "matrix.w_bits", "matrix.a_bits", "matrix.exclude"} <= set(keys)
    assert not {"matrix", "matrix.archs"} & set(keys)
    fewer = copy.deepcopy(cfg)
    fewer["matrix"]["archs"] = ["sagan"]
    assert sweep.sweep_widths(fewer) == sweep.sweep_widths(cfg) and stages.param_values(fewer, "quantile_sweep", {"arch": "sagan"}) == \
        stages.param_values(cfg, "quantile_sweep", {"arch": "sagan"})
    assert "matrix.exclude" not in stages.param_keys(qcfg.load([ROOT / "params.yaml"]), "quantile_sweep", {"arch": "sagan"})
