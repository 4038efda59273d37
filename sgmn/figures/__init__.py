"""The suite's figures: the paper's Figs. 5, 6 and 7b reproduced on the runs, the ablation tables
(4, 5, 6) as charts, training curves and the probe figures, one module per family.

Every module imports matplotlib (Agg) and torch inside its functions, so `sgmn figures --help`
and the DAG's light rules stay quick; each figure is written as PNG and PDF, and a panel whose
inputs have not run says so ("not run") instead of failing or being left out.
"""
