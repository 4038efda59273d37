# The paper against our runs (sgmn.evaluate.diff): every published cell beside ours, every claim
# of the paper checked with a paired test on per-query hits, and where the paper contradicts
# itself. Reads the tables rule's output; the per-query files feed the tests tables did not run.


rule diff:
    input:
        tables="results/{ds}/tables",
        bench="results/{ds}/bench",
        per_query=get_run_per_query,
        table2=get_table2_inputs,
        paper=expand(os.path.join(PAPER_DIR, "table{n}.csv"), n=(1, 2, 3, 4, 5, 6, 7)),
    output:
        md="results/{ds}/diff.md",
        json="results/{ds}/diff.json",
    params:
        runs="results/{ds}/runs",
        table2=get_table2_arg,
        paper_dir=PAPER_DIR,
    log:
        "logs/diff/{ds}.log",
    benchmark:
        "benchmarks/diff/{ds}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    shell:
        "sgmn diff --tables {input.tables} --runs {params.runs} {params.table2} --bench {input.bench}"
        " --paper-dir {params.paper_dir:q} --out-md {output.md} --out-json {output.json} > {log} 2>&1"


# tables.md and diff.md as HTML pages, which `snakemake --report` shows in place (sgmn.report)
rule report_pages:
    input:
        tables="results/{ds}/tables",
        diff="results/{ds}/diff.md",
    output:
        tables=report(
            "results/{ds}/report/tables.html",
            caption="../report/tables.rst",
            category="Tables",
            labels={"page": "Tables 1-7", "source": "tables/tables.md"},
        ),
        diff=report(
            "results/{ds}/report/diff.html",
            caption="../report/diff.rst",
            category="Paper diff",
            labels={"page": "the paper against our runs", "source": "diff.md"},
        ),
    log:
        "logs/report_pages/{ds}.log",
    benchmark:
        "benchmarks/report_pages/{ds}.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "(sgmn report-page --md {input.tables}/tables.md --out {output.tables} --title 'SGMN: Tables 1-7'"
        " && sgmn report-page --md {input.diff} --out {output.diff} --title 'SGMN: the paper against our runs')"
        " > {log} 2>&1"
