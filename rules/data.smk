# Datasets, the FID feature space and real-image statistics.


rule prepare_data:
    output:
        directory("data/{dataset}"),
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "prepare_data", w),
    log:
        "logs/prepare_data/{dataset}.log",
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} prepare-data --dataset {wildcards.dataset} --out {output} --downloads downloads > {log} 2>&1"


rule train_features:
    input:
        expand("data/{dataset}", dataset=used_datasets()),
    output:
        "resources/features/tinycnn.pt",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "train_features", w),
    log:
        "logs/train_features.log",
    threads: threads_of("train_features")
    resources:
        gpu=1,
        **resources_of("train_features"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} train-features --data {input} --out {output} > {log} 2>&1"


rule fetch_inception:
    output:
        directory("resources/inception"),
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "fetch_inception", w),
    log:
        "logs/fetch_inception.log",
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} fetch-inception --out {output} > {log} 2>&1"


localrules: prepare_data, fetch_inception


rule real_stats:
    input:
        data="data/{dataset}",
        features=FEATURES,
    output:
        "stats/{dataset}-{split}.npz",
    params:
        cfg=PARAMS,
        section=lambda w: dag.param_values(config, "real_stats", w),
    log:
        "logs/real_stats/{dataset}/{split}.log",
    threads: threads_of("real_stats")
    resources:
        gpu=1,
        **resources_of("real_stats"),
    conda:
        ENV
    shell:
        "python -m workflow_src --config {params.cfg} --threads {threads} real-stats --data {input.data} --split {wildcards.split} --features {input.features} --out {output} > {log} 2>&1"
