"""Sweeps and searches as one layer. A group is an Optuna study whose trials train rnnctl runs: a sweep's
trials are its grid's points, queued when it is made; a search's are sampled (TPE) and pruned. Both are
driven by the same workers, resumed the same way, and summarized from their trials and members' runs.

    space.py    grids and search spaces, checked against the config; the metric's direction
    storage.py  the Optuna storage (SQLite, PostgreSQL, a journal file), with heartbeats
    folder.py   GroupFolder: the only code that knows a group folder's files
    trials.py   members read from trials; the objective and pruning callback; requeueing
    workers.py  the processes that train members, and how they stop on a signal
    results.py  progress lines while training; trials.csv, best.yaml, summary.json and figures after
    engine.py   making, joining, resuming and driving a group: what the commands call
"""
