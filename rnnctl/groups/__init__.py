"""Sweeps and searches as one layer: a group is an Optuna study whose trials train rnnctl runs (a sweep's are
its grid's points, queued when it is made; a search's are sampled and pruned). `engine` is what the commands
call; `folder` alone knows a group folder's files; space, storage, trials, workers, results: one concern each."""
