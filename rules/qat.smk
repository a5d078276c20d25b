# Quantization-aware training (MA-QAT, LSQ-QAT) and the perceptual network of its distillation loss.
# QAT variants are built by `qat` (ruleorder below); every other method by `quantize`.


rule train_perceptual:
    input:
        expand("data/{dataset}", dataset=used_datasets()),
    output:
        "resources/perceptual/tinyvgg.pt",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "train_perceptual", w),
    log:
        "logs/train_perceptual.log",
    threads: threads_of("train_perceptual")
    resources:
        gpu=1,
        **resources_of("train_perceptual"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} train-perceptual --data {input} --out {output} > {log} 2>&1"


rule fetch_vgg16:
    output:
        "resources/perceptual/vgg16.pth",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "fetch_vgg16", w),
    log:
        "logs/fetch_vgg16.log",
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} fetch-vgg16 --out {output} > {log} 2>&1"


localrules: fetch_vgg16


rule qat:
    input:
        fp="models/fp/{arch}.pt",
        distill="distill/{arch}.pt",
        quantiles=sweep_best,
        perceptual=perceptual_net,
    output:
        model="models/q/{arch}/{variant}.pt",
        info="models/q/{arch}/{variant}.json",
        losses="models/q/{arch}/{variant}.losses.csv",
    wildcard_constraints:
        variant=QAT_VARIANT,
    params:
        cfg=PARAMS,
        quantiles=lambda w, input: f"--quantiles {input.quantiles}" if input.quantiles else "",
        perceptual=lambda w, input: f"--perceptual {input.perceptual}" if input.perceptual else "",
        section=lambda w: dag.param_values(config, "qat", w),
    log:
        "logs/qat/{arch}/{variant}.log",
    threads: threads_of("qat")
    resources:
        gpu=1,
        **resources_of("qat"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} quantize --arch {wildcards.arch} --variant {wildcards.variant} --fp {input.fp} --distill {input.distill} --out {output.model} --info {output.info} --losses {output.losses} {params.quantiles} {params.perceptual} > {log} 2>&1"


ruleorder: qat > quantize
