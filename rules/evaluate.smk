# FID (vs real test images) and qFID (vs the FP generator on the same inputs).


rule evaluate_fp:
    input:
        model="models/fp/{arch}.pt",
        inputs="eval/{arch}/inputs.pt",
        features=FEATURES,
        real=real_stats,
    output:
        metrics="metrics/{arch}/fp.json",
        stats="eval/{arch}/fp_stats.npz",
        samples="samples/{arch}/fp.png",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "evaluate_fp", w),
    log:
        "logs/evaluate_fp/{arch}.log",
    threads: threads_of("evaluate_fp")
    resources:
        gpu=1,
        **resources_of("evaluate_fp"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} evaluate --arch {wildcards.arch} --variant fp --model {input.model} --inputs {input.inputs}"
        " --features {input.features} --real-stats {input.real} --fp-stats {output.stats} --out {output.metrics}"
        " --samples {output.samples} > {log} 2>&1"


rule evaluate:
    input:
        model="models/q/{arch}/{variant}.pt",
        inputs="eval/{arch}/inputs.pt",
        features=FEATURES,
        real=real_stats,
        fp_stats="eval/{arch}/fp_stats.npz",
    output:
        metrics="metrics/{arch}/{variant}.json",
        samples="samples/{arch}/{variant}.png",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "evaluate", w),
    log:
        "logs/evaluate/{arch}/{variant}.log",
    threads: threads_of("evaluate")
    resources:
        gpu=1,
        **resources_of("evaluate"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} evaluate --arch {wildcards.arch} --variant {wildcards.variant} --model {input.model} --inputs {input.inputs}"
        " --features {input.features} --real-stats {input.real} --fp-stats {input.fp_stats} --out {output.metrics}"
        " --samples {output.samples} > {log} 2>&1"


ruleorder: evaluate_fp > evaluate
