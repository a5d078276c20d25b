# Layer sensitivity (beyond the paper): the damage of each layer or operation quantized alone, per arch.


rule sensitivity:
    input:
        **stage_input("sensitivity"),
    output:
        **stage_output("sensitivity"),
    params:
        **stage_params("sensitivity"),
    priority: priority_of("sensitivity")
    log:
        stage_log("sensitivity"),
    benchmark:
        stage_benchmark("sensitivity")
    threads: threads_of("sensitivity")
    resources:
        gpu=1,
        **resources_of("sensitivity"),
    conda:
        ENV
    shell:
        stage_shell("sensitivity")


rule fig_sensitivity:
    input:
        **stage_input("fig_sensitivity"),
    output:
        **stage_output("fig_sensitivity"),
    params:
        **stage_params("fig_sensitivity"),
    priority: priority_of("fig_sensitivity")
    log:
        stage_log("fig_sensitivity"),
    benchmark:
        stage_benchmark("fig_sensitivity")
    threads: threads_of("fig_sensitivity")
    resources:
        **resources_of("fig_sensitivity"),
    conda:
        ENV
    shell:
        stage_shell("fig_sensitivity")
