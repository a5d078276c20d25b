# Tables, figures and the HTML report.


rule sample_figure:
    input:
        unpack(figure_models),
        fp="models/fp/{arch}.pt",
        inputs="eval/{arch}/inputs.pt",
    output:
        report("reports/fig_samples_{arch}.png", caption="../report/fig_samples.rst", category="Figures", subcategory="Samples"),
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "sample_figure", w),
    log:
        "logs/sample_figure/{arch}.log",
    threads: threads_of("sample_figure")
    resources:
        **resources_of("sample_figure"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} sample-figure --arch {wildcards.arch} --fp {input.fp} --inputs {input.inputs}"
        " --models models/q/{wildcards.arch} --metrics metrics/{wildcards.arch} --out {output} > {log} 2>&1"


rule report:
    input:
        metrics=expand("metrics/{arch}/{variant}.json", arch=ARCHS, variant=["fp"] + VARIANTS),
        samples=expand("samples/{arch}/{variant}.png", arch=ARCHS, variant=["fp"] + VARIANTS),
        fig1=rules.fig1.output.png,
        figures=expand("reports/fig_samples_{arch}.png", arch=ARCHS),
        exports=expand("metrics/{arch}/{variant}.export.json", arch=ARCHS, variant=EXPORT_VARIANTS),
    output:
        results=report("reports/results.csv", caption="../report/results.rst", category="Tables"),
        table4=report("reports/table4.md", caption="../report/table4.rst", category="Tables"),
        table3=report("reports/table3.md", caption="../report/table3.rst", category="Tables"),
        paper=report("reports/paper_comparison.md", caption="../report/paper_comparison.rst", category="Tables"),
        export=report("reports/export.md", caption="../report/export.rst", category="Tables"),
        html="reports/index.html",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "report", w),
    log:
        "logs/report.log",
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} report --metrics {input.metrics} --exports {input.exports} --samples samples --out reports > {log} 2>&1"
