# Full-precision GAN training; resumes from models/fp/{arch}.ckpt.pt after a kill.


rule train_fp:
    input:
        data_dir,
    output:
        model="models/fp/{arch}.pt",
        losses="models/fp/{arch}.losses.csv",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "train_fp", w),
        ckpt="models/fp/{arch}.ckpt.pt",
    log:
        "logs/train_fp/{arch}.log",
    threads: threads_of("train_fp")
    resources:
        gpu=1,
        **resources_of("train_fp"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} train --arch {wildcards.arch} --data {input} --out {output.model} --ckpt {params.ckpt} > {log} 2>&1"
