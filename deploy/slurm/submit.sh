#!/bin/sh
# Submits the shard array, then the verify step to run once every task of it has ended
# (afterany: a task that failed for good leaves its shard incomplete, which verify names).
set -eu
here=$(dirname "$0")
array=$(sbatch --parsable "$here/batchflow.sbatch")
verify=$(sbatch --parsable --dependency="afterany:${array}" "$here/verify.sbatch")
echo "shards: job ${array}; verify: job ${verify} (batchflow-verify-${verify}.log)"
