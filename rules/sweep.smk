# The quantile sweep (paper Figure 1); its best pair feeds archs whose quantiles are `sweep`.


rule quantile_sweep:
    input:
        **stage_input("quantile_sweep"),
    output:
        **stage_output("quantile_sweep"),
    params:
        **stage_params("quantile_sweep"),
    priority: priority_of("quantile_sweep")
    log:
        stage_log("quantile_sweep"),
    benchmark:
        stage_benchmark("quantile_sweep")
    threads: threads_of("quantile_sweep")
    resources:
        gpu=1,
        **resources_of("quantile_sweep"),
    conda:
        ENV
    shell:
        stage_shell("quantile_sweep")


rule fig1:
    input:
        **stage_input("fig1"),
    output:
        **stage_output("fig1"),
    params:
        **stage_params("fig1"),
    priority: priority_of("fig1")
    log:
        stage_log("fig1"),
    benchmark:
        stage_benchmark("fig1")
    threads: threads_of("fig1")
    resources:
        **resources_of("fig1"),
    conda:
        ENV
    shell:
        stage_shell("fig1")
