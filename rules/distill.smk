# The distillation set (calibration draws from it) and the seeded evaluation inputs.


rule distill:
    input:
        data=data_dir,
        fp="models/fp/{arch}.pt",
    output:
        "distill/{arch}.pt",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "distill", w),
    log:
        "logs/distill/{arch}.log",
    threads: threads_of("distill")
    resources:
        gpu=1,
        **resources_of("distill"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} distill --arch {wildcards.arch} --data {input.data} --fp {input.fp} --out {output} > {log} 2>&1"


rule eval_inputs:
    input:
        data_dir,
    output:
        "eval/{arch}/inputs.pt",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "eval_inputs", w),
    log:
        "logs/eval_inputs/{arch}.log",
    threads: threads_of("eval_inputs")
    resources:
        **resources_of("eval_inputs"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} eval-inputs --arch {wildcards.arch} --data {input} --out {output} > {log} 2>&1"
