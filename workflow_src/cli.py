"""``python -m workflow_src STAGE --config params.yaml [--config override.yaml] ...``

One subcommand per workflow stage; Snakemake rules and DVC stages call exactly these.  Every
invocation validates the merged params against the schema before doing anything."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import config as config_mod


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_src", description=__doc__)
    p.add_argument("--config", action="append", default=None, help="params YAML; repeat to merge overrides (default: params.yaml)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    sub = p.add_subparsers(dest="stage", required=True)

    def stage(name, help, *args):
        sp = sub.add_parser(name, help=help)
        for a in args:
            sp.add_argument(f"--{a}", required=True)
        return sp

    stage("validate", "validate the params and print the experiment matrix")
    stage("dvc-yaml", "regenerate dvc.yaml from the Snakemake DAG", "out")
    stage("prepare-data", "download or generate a dataset", "dataset", "out", "downloads")
    stage("fetch-inception", "download pytorch-fid's FID Inception weights (sha256-verified)", "out")
    sp = stage("train-features", "train the tiny profile's FID feature network", "out")
    sp.add_argument("--data", nargs="+", required=True)
    stage("fetch-vgg16", "download torchvision's VGG16 weights for the perceptual loss (sha256-verified)", "out")
    sp = stage("train-perceptual", "train the tiny profile's perceptual network (QAT's distillation loss)", "out")
    sp.add_argument("--data", nargs="+", required=True)
    stage("real-stats", "feature statistics of real images", "data", "split", "features", "out")
    stage("train", "train a full-precision GAN (resumes from --ckpt)", "arch", "data", "out", "ckpt")
    stage("import-fp", "import the FP networks from a published checkpoint (archs.<arch>.fp_checkpoint)", "arch", "checkpoint", "out")
    stage("distill", "generate the distillation set", "arch", "data", "fp", "out")
    stage("eval-inputs", "draw the seeded evaluation inputs", "arch", "data", "out")
    sp = stage("quantize", "quantize a generator with one method/variant", "arch", "variant", "fp", "distill", "out", "info")
    sp.add_argument("--quantiles", default=None, help="best.json of the quantile sweep (archs.<arch>.quantiles: sweep)")
    sp.add_argument("--perceptual", default=None, help="QAT: the perceptual network (perceptual.kind)")
    sp.add_argument("--losses", default=None, help="QAT: per-step losses CSV")
    stage("quantile-sweep", "qFID over activation/weight quantile pairs (Figure 1)", "arch", "fp", "distill", "inputs", "features", "fp-stats", "out", "best")
    sp = stage("fig1", "the quantile-sweep figure and table", "png", "out")
    sp.add_argument("--sweeps", nargs="+", required=True)
    stage("evaluate", "FID and qFID of one variant (or fp)", "arch", "variant", "model", "inputs", "features", "real-stats", "fp-stats", "out", "samples")
    stage("export-fp", "FP32 exports of a generator (baselines of rule export)", "arch", "fp", "inputs", "out")
    stage("export", "integer exports of one variant, checked and timed against FP32", "arch", "variant", "model", "fp-exports", "inputs",
          "features", "out-dir", "out")
    stage("sample-figure", "samples by method at w8/w4 with FID captions (paper Figures 2-4)", "arch", "fp", "inputs", "models", "metrics", "out")
    sp = stage("report", "tables, figures and the HTML report", "samples", "out")
    sp.add_argument("--metrics", nargs="+", required=True)
    sp.add_argument("--exports", nargs="*", default=[], help="export summaries (rule export)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config or ["params.yaml"])
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from . import stages
    from .device import resolve_device
    from .utils import set_threads

    device = lambda: resolve_device(cfg)  # noqa: E731  issue 15: runtime.device, resolved only by stages that compute

    set_threads(args.threads)
    s = args.stage
    if s == "validate":
        print(f"params OK: profile {cfg['profile']}, archs {cfg['matrix']['archs']}")
        for v in config_mod.variants(cfg):
            print("  ", v.name)
    elif s == "dvc-yaml":
        from pathlib import Path

        from .dag import render_dvc_yaml
        from .utils import atomic_write_text

        atomic_write_text(args.out, render_dvc_yaml(Path(__file__).resolve().parents[1]))
    elif s == "prepare-data":
        from . import data

        data.prepare(args.dataset, cfg["datasets"][args.dataset], args.out, download_dir=args.downloads)
    elif s == "fetch-inception":
        stages.fetch_inception(cfg, args.out)
    elif s == "fetch-vgg16":
        stages.fetch_vgg16(cfg, args.out)
    elif s == "train-perceptual":
        stages.train_perceptual(cfg, args.data, args.out, device())
    elif s == "train-features":
        stages.train_features(cfg, args.data, args.out, device())
    elif s == "real-stats":
        stages.real_stats(cfg, args.data, args.split, args.features, args.out, device())
    elif s == "train":
        stages.train_fp(cfg, args.arch, args.data, args.out, args.ckpt, device())
    elif s == "import-fp":
        from .models.importers import import_fp

        import_fp(cfg, args.arch, args.checkpoint, args.out)
    elif s == "distill":
        stages.distill(cfg, args.arch, args.data, args.fp, args.out, device())
    elif s == "eval-inputs":
        stages.eval_inputs(cfg, args.arch, args.data, args.out)
    elif s == "quantize":
        stages.quantize(cfg, args.arch, args.variant, args.fp, args.distill, args.out, args.info, args.quantiles, args.perceptual, args.losses, device())
    elif s == "quantile-sweep":
        from .sweep import run_sweep

        run_sweep(cfg, args.arch, args.fp, args.distill, args.inputs, args.features, args.fp_stats, args.out, args.best, device())
    elif s == "fig1":
        from .sweep import figure

        figure(args.sweeps, args.png, args.out)
    elif s == "evaluate":
        stages.evaluate(cfg, args.arch, args.variant, args.model, args.inputs, args.features, args.real_stats, args.fp_stats, args.out, args.samples, device())
    elif s == "export-fp":
        from .export.stage import export_fp

        export_fp(cfg, args.arch, args.fp, args.inputs, args.out)
    elif s == "export":
        from .export.stage import export_variant

        export_variant(cfg, args.arch, args.variant, args.model, args.fp_exports, args.inputs, args.features, args.out_dir, args.out)
    elif s == "sample-figure":
        from .figures import sample_figure

        sample_figure(cfg, args.arch, args.fp, args.inputs, args.models, args.metrics, args.out, device())
    elif s == "report":
        from . import report

        report.build(cfg, args.metrics, args.samples, args.out, args.exports)
    return 0
