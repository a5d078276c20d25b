# qgan-bench: quantization of GAN generators, one DAG from data to report.
#   snakemake --cores all report                                  (tiny profile, CPU, offline)
#   snakemake --cores all report --configfile configs/paper.yaml  (paper scale)
# This file is a table of contents: config handling lives in rules/common.smk, the stages in
# rules/*.smk, the science in workflow_src/.
import os

from snakemake.utils import min_version

min_version("9.0")


# params.yaml beside this Snakefile is the default; --configfile files are merged over it.
configfile: os.path.join(workflow.basedir, "params.yaml")


report: "rules/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/distill.smk"
include: "rules/quantize.smk"
include: "rules/qat.smk"
include: "rules/evaluate.smk"
include: "rules/sweep.smk"
include: "rules/sensitivity.smk"
include: "rules/export.smk"
include: "rules/report.smk"


rule all:
    """the report and every job it needs; the default target"""
    input:
        rules.report.output,
    default_target: True


# `snakemake --list-rules` describes each stage's rule by the help of its command (workflow_src/workflow/stages.py).
for _rule in workflow.rules:
    if _rule.name in S.STAGES:
        _rule.docstring = S.stage(_rule.name).help
