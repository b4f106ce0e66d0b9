"""The one place the local control plane's versions are pinned."""

KUBERNETES_VERSION = "v1.34.4"
KWOK_VERSION = "v0.7.0"
# The minimum Go that compiles KUBERNETES_VERSION (its go.mod says `go 1.24.0`).
GO_MIN = (1, 24)
