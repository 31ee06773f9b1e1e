"""Evaluate: agents on simulated conversations, scored against the flowchart.

    run.py          scenarios → conversations → metrics → statistics → report (the stage's driver)
    simulate.py     scripted and LLM user simulators, scenario sampling
    judge.py        the blind five-criterion LLM judge
    conformance.py  node mapping (MiniLM) and the objective procedure-following metrics
    stats.py        paired tests, Holm-Bonferroni, bootstrap CIs, pass^k
    cost.py         cost per conversation: self-hosted vs API, break-even
    report.py       the HTML report (plotly, offline)
"""
