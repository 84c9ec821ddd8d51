"""Reports over finished runs: collect run directories, tabulate over seeds, draw figures (`warmfed-report`).

collect.py reads run directories into records, paired.py compares methods seed by seed, tables.py and document.py
write the markdown, figures.py the PNGs, cli.py is the `warmfed-report` command.
"""
