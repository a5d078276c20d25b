# Tables, figures and the HTML report.


rule report:
    input:
        metrics=expand("metrics/{arch}/{variant}.json", arch=ARCHS, variant=["fp"] + VARIANTS),
        samples=expand("samples/{arch}/{variant}.png", arch=ARCHS, variant=["fp"] + VARIANTS),
        fig1=rules.fig1.output.png,
    output:
        results="reports/results.csv",
        table4="reports/table4.md",
        table3="reports/table3.md",
        html="reports/index.html",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "report", w),
    log:
        "logs/report.log",
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} report --metrics {input.metrics} --samples samples --out reports > {log} 2>&1"
