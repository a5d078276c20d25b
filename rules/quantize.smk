# One quantized generator per (arch, variant); variant = {method}-{channel|tensor}-w{W}a{A}.


rule quantize:
    input:
        fp="models/fp/{arch}.pt",
        distill="distill/{arch}.pt",
        quantiles=sweep_best,
    output:
        model="models/q/{arch}/{variant}.pt",
        info="models/q/{arch}/{variant}.json",
    params:
        cfg=PARAMS,
        quantiles=lambda w, input: f"--quantiles {input.quantiles}" if input.quantiles else "",
        section=lambda w: dag.param_values(config, "quantize", w),
    log:
        "logs/quantize/{arch}/{variant}.log",
    threads: threads_of("quantize")
    resources:
        gpu=1,
        **resources_of("quantize"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} quantize --arch {wildcards.arch} --variant {wildcards.variant} --fp {input.fp} --distill {input.distill} --out {output.model} --info {output.info} {params.quantiles} > {log} 2>&1"
