# Integer exports of every quantized variant (ONNX QDQ on onnxruntime, torch.export on oneDNN),
# checked against the fake-quant model and timed against the FP32 exports of the same generator.


rule export_fp:
    input:
        **stage_input("export_fp"),
    output:
        **stage_output("export_fp"),
    params:
        **stage_params("export_fp"),
    priority: priority_of("export_fp")
    log:
        stage_log("export_fp"),
    benchmark:
        stage_benchmark("export_fp")
    threads: threads_of("export_fp")
    resources:
        **resources_of("export_fp"),
    conda:
        ENV
    shell:
        stage_shell("export_fp")


rule export:
    input:
        **stage_input("export"),
    output:
        **stage_output("export"),
    params:
        **stage_params("export"),
    priority: priority_of("export")
    log:
        stage_log("export"),
    benchmark:
        stage_benchmark("export")
    threads: threads_of("export")
    resources:
        **resources_of("export"),
    conda:
        ENV
    shell:
        stage_shell("export")


ruleorder: export_fp > export
