# Datasets, the FID feature space and real-image statistics.


rule prepare_data:
    output:
        **stage_output("prepare_data"),
    params:
        **stage_params("prepare_data"),
    priority: priority_of("prepare_data")
    log:
        stage_log("prepare_data"),
    benchmark:
        stage_benchmark("prepare_data")
    conda:
        ENV
    shell:
        stage_shell("prepare_data")


rule train_features:
    input:
        **stage_input("train_features"),
    output:
        **stage_output("train_features"),
    params:
        **stage_params("train_features"),
    priority: priority_of("train_features")
    log:
        stage_log("train_features"),
    benchmark:
        stage_benchmark("train_features")
    threads: threads_of("train_features")
    resources:
        gpu=1,
        **resources_of("train_features"),
    conda:
        ENV
    shell:
        stage_shell("train_features")


rule fetch_inception:
    output:
        **stage_output("fetch_inception"),
    params:
        **stage_params("fetch_inception"),
    priority: priority_of("fetch_inception")
    log:
        stage_log("fetch_inception"),
    benchmark:
        stage_benchmark("fetch_inception")
    conda:
        ENV
    shell:
        stage_shell("fetch_inception")


rule real_stats:
    input:
        **stage_input("real_stats"),
    output:
        **stage_output("real_stats"),
    params:
        **stage_params("real_stats"),
    priority: priority_of("real_stats")
    log:
        stage_log("real_stats"),
    benchmark:
        stage_benchmark("real_stats")
    threads: threads_of("real_stats")
    resources:
        gpu=1,
        **resources_of("real_stats"),
    conda:
        ENV
    shell:
        stage_shell("real_stats")


localrules: prepare_data, fetch_inception
