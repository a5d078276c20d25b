# Quantization-aware training (MA-QAT, LSQ-QAT, any method of kind qat) and the perceptual network of
# its distillation loss.  Variants of those methods are built by `qat` (ruleorder below); every other by `quantize`.


rule train_perceptual:
    input:
        **stage_input("train_perceptual"),
    output:
        **stage_output("train_perceptual"),
    params:
        **stage_params("train_perceptual"),
    priority: priority_of("train_perceptual")
    log:
        stage_log("train_perceptual"),
    benchmark:
        stage_benchmark("train_perceptual")
    threads: threads_of("train_perceptual")
    resources:
        gpu=1,
        **resources_of("train_perceptual"),
    conda:
        ENV
    shell:
        stage_shell("train_perceptual")


rule fetch_vgg16:
    output:
        **stage_output("fetch_vgg16"),
    params:
        **stage_params("fetch_vgg16"),
    priority: priority_of("fetch_vgg16")
    log:
        stage_log("fetch_vgg16"),
    benchmark:
        stage_benchmark("fetch_vgg16")
    conda:
        ENV
    shell:
        stage_shell("fetch_vgg16")


rule qat:
    input:
        **stage_input("qat"),
    output:
        **stage_output("qat"),
    params:
        **stage_params("qat"),
    priority: priority_of("qat")
    log:
        stage_log("qat"),
    benchmark:
        stage_benchmark("qat")
    wildcard_constraints:
        variant=QAT_VARIANT,
    threads: threads_of("qat")
    resources:
        gpu=1,
        **resources_of("qat"),
    conda:
        ENV
    shell:
        stage_shell("qat")


localrules: fetch_vgg16


ruleorder: qat > quantize
