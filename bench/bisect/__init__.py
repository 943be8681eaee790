"""`python -m bench bisect`: which commit made a case slower.

A binary search over the first-parent commits from a known-good commit to a known-bad one of the git repository a
suite lives in (`git.py`). Each step measures one commit's tree against the good commit's tree, in A/B rounds of
`python -m bench run` on the same machine (`rounds.py`), judges the paired ratio with the gate's rule, and appends
the step to the bisect's directory, from which `--resume` continues (`log.py`); `search.py` drives the steps.
"""
