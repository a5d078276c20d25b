# Integer exports of every quantized variant (ONNX QDQ on onnxruntime, torch.export on oneDNN),
# checked against the fake-quant model and timed against the FP32 exports of the same generator.


rule export_fp:
    input:
        model="models/fp/{arch}.pt",
        inputs="eval/{arch}/inputs.pt",
    output:
        directory("exports/{arch}/fp"),
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "export_fp", w),
    log:
        "logs/export_fp/{arch}.log",
    threads: threads_of("export_fp")
    resources:
        **resources_of("export_fp"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} export-fp --arch {wildcards.arch} --fp {input.model}"
        " --inputs {input.inputs} --out {output} > {log} 2>&1"


rule export:
    input:
        model="models/q/{arch}/{variant}.pt",
        fp="exports/{arch}/fp",
        inputs="eval/{arch}/inputs.pt",
        features=FEATURES,
    output:
        files=directory("exports/{arch}/{variant}"),
        summary="metrics/{arch}/{variant}.export.json",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "export", w),
    log:
        "logs/export/{arch}/{variant}.log",
    threads: threads_of("export")
    resources:
        **resources_of("export"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} export --arch {wildcards.arch} --variant {wildcards.variant}"
        " --model {input.model} --fp-exports {input.fp} --inputs {input.inputs} --features {input.features}"
        " --out-dir {output.files} --out {output.summary} > {log} 2>&1"


ruleorder: export_fp > export
