# Full-precision GANs: trained (resumes from models/fp/{arch}.ckpt.pt after a kill), or imported
# from a published checkpoint for archs with `archs.<arch>.fp_checkpoint` (workflow_src.models.importers).


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
    wildcard_constraints:
        arch=arch_pattern(TRAINED_ARCHS),
    threads: threads_of("train_fp")
    resources:
        gpu=1,
        **resources_of("train_fp"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} train --arch {wildcards.arch} --data {input} --out {output.model} --ckpt {params.ckpt} > {log} 2>&1"


rule import_fp:
    input:
        fp_checkpoint,
    output:
        model="models/fp/{arch}.pt",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "import_fp", w),
    log:
        "logs/import_fp/{arch}.log",
    wildcard_constraints:
        arch=arch_pattern(IMPORTED_ARCHS),
    threads: threads_of("import_fp")
    resources:
        **resources_of("import_fp"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} import-fp --arch {wildcards.arch} --checkpoint {input} --out {output.model} > {log} 2>&1"
