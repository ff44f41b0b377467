#!/bin/sh
# One worker of a multi-worker `tledge train` run: the entry point of each pod of docs/cluster/job.yaml.
# Environment:
#   WORKER_HOSTS          host:port of every worker, comma-separated, in index order (index 0 = the chief)
#   JOB_COMPLETION_INDEX  this worker's index (a Kubernetes Indexed Job sets it in every pod)
#   DATA                  the data folder (class folders, or train/ and val/), the same on every worker
#   WEIGHTS               the backbone's no-top ImageNet .h5 file
#   OUT                   the run folder: only worker 0 writes it (the others write nothing)
# Arguments are passed on to `tledge train` after the recipe's own (a later flag wins), e.g. --resume.
set -eu
TF_CONFIG=$(python3 -c 'import json, os
hosts = os.environ["WORKER_HOSTS"].split(",")
index = int(os.environ["JOB_COMPLETION_INDEX"])
print(json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}))')
export TF_CONFIG
exec tledge train "$DATA" --backbone mobilenet --alpha 0.25 --weights "$WEIGHTS" --size 224 --out "$OUT" "$@"
