#!/usr/bin/env bash
# `make report`'s runner: snakemake "$@" in this directory, one run at a time.
#
# The run holds an exclusive flock on .qgan/workflow.lock for its whole life (the lock goes with the
# process: a run killed with kill -9 releases it).  Holding it means no other run started this way
# is active here, so a Snakemake lock left in .snakemake/locks is a killed run's, and is cleared;
# the profile's rerun-incomplete then redoes the jobs that run left unfinished.  A second run while
# one holds the lock stops at once and says so (exit 75).  A `snakemake` started by hand takes no
# flock: do not start one beside `make report`.
set -uo pipefail
mkdir -p .qgan
exec 9>>.qgan/workflow.lock
if ! flock -n 9; then
  echo "another workflow run is active in $(pwd) (it holds .qgan/workflow.lock): wait for it to finish" >&2
  exit 75
fi
if [ -n "$(ls -A .snakemake/locks 2>/dev/null)" ]; then
  echo "clearing the Snakemake lock of a killed run (no other run holds .qgan/workflow.lock)" >&2
  snakemake --unlock >/dev/null || exit $?
fi
exec snakemake "$@"
