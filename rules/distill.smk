# The distillation set (calibration draws from it) and the seeded evaluation inputs.


rule distill:
    input:
        **stage_input("distill"),
    output:
        **stage_output("distill"),
    params:
        **stage_params("distill"),
    priority: priority_of("distill")
    log:
        stage_log("distill"),
    benchmark:
        stage_benchmark("distill")
    threads: threads_of("distill")
    resources:
        gpu=1,
        **resources_of("distill"),
    conda:
        ENV
    shell:
        stage_shell("distill")


rule eval_inputs:
    input:
        **stage_input("eval_inputs"),
    output:
        **stage_output("eval_inputs"),
    params:
        **stage_params("eval_inputs"),
    priority: priority_of("eval_inputs")
    log:
        stage_log("eval_inputs"),
    benchmark:
        stage_benchmark("eval_inputs")
    threads: threads_of("eval_inputs")
    resources:
        **resources_of("eval_inputs"),
    conda:
        ENV
    shell:
        stage_shell("eval_inputs")
