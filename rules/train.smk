# Full-precision GANs: trained (resumes from models/s{seed}/fp/{arch}.ckpt.pt after a kill), or imported
# from a published checkpoint for archs with `archs.<arch>.fp_checkpoint` (workflow_src.archs.importers).


rule train_fp:
    input:
        **stage_input("train_fp"),
    output:
        **stage_output("train_fp"),
    params:
        **stage_params("train_fp"),
    priority: priority_of("train_fp")
    log:
        stage_log("train_fp"),
    benchmark:
        stage_benchmark("train_fp")
    wildcard_constraints:
        arch=arch_pattern(TRAINED_ARCHS),
    threads: threads_of("train_fp")
    resources:
        gpu=1,
        **resources_of("train_fp"),
    conda:
        ENV
    shell:
        stage_shell("train_fp")


rule import_fp:
    input:
        **stage_input("import_fp"),
    output:
        **stage_output("import_fp"),
    params:
        **stage_params("import_fp"),
    priority: priority_of("import_fp")
    log:
        stage_log("import_fp"),
    benchmark:
        stage_benchmark("import_fp")
    wildcard_constraints:
        arch=arch_pattern(IMPORTED_ARCHS),
    threads: threads_of("import_fp")
    resources:
        **resources_of("import_fp"),
    conda:
        ENV
    shell:
        stage_shell("import_fp")
