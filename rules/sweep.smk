# The quantile sweep (paper Figure 1); its best pair feeds archs whose quantiles are `sweep`.


rule quantile_sweep:
    input:
        fp="models/fp/{arch}.pt",
        distill="distill/{arch}.pt",
        inputs="eval/{arch}/inputs.pt",
        features=FEATURES,
        fp_stats="eval/{arch}/fp_stats.npz",
    output:
        csv="sweeps/{arch}/quantile_sweep.csv",
        best="sweeps/{arch}/best.json",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "quantile_sweep", w),
    log:
        "logs/quantile_sweep/{arch}.log",
    threads: threads_of("quantile_sweep")
    resources:
        gpu=1,
        **resources_of("quantile_sweep"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} quantile-sweep --arch {wildcards.arch} --fp {input.fp}"
        " --distill {input.distill} --inputs {input.inputs} --features {input.features} --fp-stats {input.fp_stats}"
        " --out {output.csv} --best {output.best} > {log} 2>&1"


rule fig1:
    input:
        expand("sweeps/{arch}/quantile_sweep.csv", arch=ARCHS),
    output:
        png=report("reports/fig1_quantile_sweep.png", caption="../report/fig1.rst", category="Figures"),
        csv="reports/quantile_sweep.csv",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "fig1", w),
    log:
        "logs/fig1.log",
    threads: threads_of("fig1")
    resources:
        **resources_of("fig1"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} fig1 --sweeps {input} --png {output.png} --out {output.csv} > {log} 2>&1"
