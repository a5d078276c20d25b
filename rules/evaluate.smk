# FID (vs real test images) and qFID (vs the FP generator on the same inputs).


rule evaluate_fp:
    input:
        **stage_input("evaluate_fp"),
    output:
        **stage_output("evaluate_fp"),
    params:
        **stage_params("evaluate_fp"),
    priority: priority_of("evaluate_fp")
    log:
        stage_log("evaluate_fp"),
    benchmark:
        stage_benchmark("evaluate_fp")
    threads: threads_of("evaluate_fp")
    resources:
        gpu=1,
        **resources_of("evaluate_fp"),
    conda:
        ENV
    shell:
        stage_shell("evaluate_fp")


rule evaluate:
    input:
        **stage_input("evaluate"),
    output:
        **stage_output("evaluate"),
    params:
        **stage_params("evaluate"),
    priority: priority_of("evaluate")
    log:
        stage_log("evaluate"),
    benchmark:
        stage_benchmark("evaluate")
    threads: threads_of("evaluate")
    resources:
        gpu=1,
        **resources_of("evaluate"),
    conda:
        ENV
    shell:
        stage_shell("evaluate")


ruleorder: evaluate_fp > evaluate


rule noise_floor:
    input:
        **stage_input("noise_floor"),
    output:
        **stage_output("noise_floor"),
    params:
        **stage_params("noise_floor"),
    priority: priority_of("noise_floor")
    log:
        stage_log("noise_floor"),
    benchmark:
        stage_benchmark("noise_floor")
    threads: threads_of("noise_floor")
    resources:
        gpu=1,
        **resources_of("noise_floor"),
    conda:
        ENV
    shell:
        stage_shell("noise_floor")
