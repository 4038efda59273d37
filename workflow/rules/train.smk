def get_train_processes(wildcards):
    """train.processes of the variant's resolved config: torchrun processes, one per GPU."""
    return int(resolved(wildcards)["train"].get("processes") or 1)


def get_train_launcher(wildcards):
    """`sgmn`, or torchrun with one process per GPU when the variant trains data-parallel."""
    n = get_train_processes(wildcards)
    if n > 1:
        return f"torchrun --standalone --nproc_per_node {n} -m sgmn.cli"
    return "sgmn"


def get_train_gpus(wildcards):
    """GPUs a data-parallel job needs (-> sbatch --gpus=N); 0 leaves a one-process job's GPU to
    the profile's gres, as for the other rules."""
    n = get_train_processes(wildcards)
    return n if n > 1 else 0


rule train:
    input:
        config="results/{ds}/configs/{variant}.json",
        data=get_data_dir,
        clip=get_clip_weights_input,
        text=get_text_input,
        frames=get_frame_store,
        init=get_init_input,
        index=get_index_input,
    output:
        # ckpt/latest.pt stays undeclared: Snakemake must not delete it when a job fails (a rerun
        # after a failed evaluation resumes at the last step and only evaluates)
        checkpoint="results/{ds}/runs/{variant}/seed{seed}/final.pt",
        # the evaluation of final.pt, in the training process (`sgmn train --metrics-out`): it
        # saves a process start, the imports and a job per run; rule evaluate scores what is not
        # trained here (Table 2's zero-shot row)
        metrics="results/{ds}/runs/{variant}/seed{seed}/metrics.json",
        scores="results/{ds}/runs/{variant}/seed{seed}/scores.parquet",
        per_query="results/{ds}/runs/{variant}/seed{seed}/per_query.parquet",
    params:
        clip=get_clip_weights_arg,
        launcher=get_train_launcher,
        text=get_text_arg,
        frames=get_frame_store_arg,
        init=get_init_arg,
    log:
        "logs/train/{ds}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{ds}/{variant}/seed{seed}.tsv"
    threads: get_train_threads
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=get_train_gpus,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "{params.launcher} train --config {input.config} --seed {wildcards.seed} --data {input.data}"
        " --clip-weights {params.clip} --out $(dirname {output.checkpoint}) {params.text} {params.frames} {params.init}"
        " --threads {threads} --metrics-out {output.metrics} --scores-out {output.scores}"
        " --per-query-out {output.per_query} > {log} 2>&1"


# Table 2's "SGMN (w/o Finetune)": the main dataset's run, evaluated on the second dataset as it
# is. Its checkpoint is copied in place of a training run, and rule evaluate scores it.
ruleorder: zero_shot_checkpoint > train
ruleorder: evaluate > train


rule zero_shot_checkpoint:
    input:
        get_zero_shot_source,
    output:
        "results/{ds}/runs/{variant}/seed{seed}/final.pt",
    wildcard_constraints:
        variant=config["table2"]["zero_shot"]["variant"],
    log:
        "logs/zero_shot_checkpoint/{ds}/{variant}/seed{seed}.log",
    localrule: True
    conda:
        "../envs/tables.yaml"
    shell:
        # a copy, not a hard link: Snakemake touches a job's outputs, and through a shared inode
        # that would make the source run's checkpoint newer than its own metrics (a rerun)
        "cp {input} {output} > {log} 2>&1"
