"""The one place the versions of the tools `depgate dev` compiles are pinned."""

KUBERNETES_VERSION = "v1.34.4"
KWOK_VERSION = "v0.7.0"
# The minimum Go that compiles KUBERNETES_VERSION (its go.mod says `go 1.24.0`).
GO_MIN = (1, 24)

# Helm, for the chart in charts/depgate (tests/integration/test_helm.py): its Go module's command.
HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.22.0"
# The minimum Go that compiles HELM_VERSION (its go.mod says `go 1.26.0`).
HELM_GO_MIN = (1, 26)
