# Tables, figures and the HTML report.


rule sample_figure:
    input:
        **stage_input("sample_figure"),
    output:
        **stage_output("sample_figure"),
    params:
        **stage_params("sample_figure"),
    priority: priority_of("sample_figure")
    log:
        stage_log("sample_figure"),
    benchmark:
        stage_benchmark("sample_figure")
    threads: threads_of("sample_figure")
    resources:
        **resources_of("sample_figure"),
    conda:
        ENV
    shell:
        stage_shell("sample_figure")


rule report:
    input:
        **stage_input("report"),
    output:
        **stage_output("report"),
    params:
        **stage_params("report"),
    priority: priority_of("report")
    log:
        stage_log("report"),
    benchmark:
        stage_benchmark("report")
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    conda:
        ENV
    shell:
        stage_shell("report")
