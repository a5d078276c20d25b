# One quantized generator per (arch, variant); variant = {method}-{channel|tensor}-w{W}a{A}.
# Methods that train against the FP generator are built by rule qat (rules/qat.smk).


rule quantize:
    input:
        **stage_input("quantize"),
    output:
        **stage_output("quantize"),
    params:
        **stage_params("quantize"),
    priority: priority_of("quantize")
    log:
        stage_log("quantize"),
    benchmark:
        stage_benchmark("quantize")
    threads: threads_of("quantize")
    resources:
        gpu=1,
        **resources_of("quantize"),
    conda:
        ENV
    shell:
        stage_shell("quantize")
