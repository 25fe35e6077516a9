#!/bin/sh
# Serves the bento baked into the image on port 3000 (the port the kubernetes deploy target's
# Service and probes use). The interface comes from DRIFTLOOP_SERVING__HOST (0.0.0.0 in the image:
# probes and the Service reach the pod on its own IP); the model, variant, workers and auth token
# come from the other DRIFTLOOP_SERVING__* variables the service reads itself.
set -eu
exec bentoml serve /opt/driftloop/bento --host "${DRIFTLOOP_SERVING__HOST}" --port 3000 "$@"
