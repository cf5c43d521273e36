#!/usr/bin/env bash
# Kueue's real controller manager for the tests (tests/kueue.py starts it against a control
# plane of hack/envtest.sh): built from its Go module at the version pinned here, with the
# CRDs and webhook configurations of the same module beside it.
#
#   hack/kueue.sh build    build what is missing into the cache (several minutes, once)
#   hack/kueue.sh dir      print the folder holding kueue, crds/ and webhooks.yaml
#
# Cached outside the repository, under $LIPIZZANER_KUEUE_CACHE (default
# ~/.cache/lipizzaner/kueue), keyed by the version.
set -euo pipefail

VERSION=v0.17.0
MODULE=sigs.k8s.io/kueue
DIR="${LIPIZZANER_KUEUE_CACHE:-$HOME/.cache/lipizzaner/kueue}/$VERSION"

die() { echo "kueue: $*" >&2; exit 2; }

build() {
    [ -x "$DIR/kueue" ] && [ -f "$DIR/webhooks.yaml" ] && return 0
    command -v go >/dev/null || die "go is needed to build Kueue (see .ci/run)"
    echo "kueue: building $MODULE $VERSION into $DIR (minutes, once)" >&2
    rm -rf "$DIR.partial"
    mkdir -p "$DIR.partial/crds"
    GOBIN="$DIR.partial" go install "$MODULE/cmd/kueue@$VERSION"
    local source
    source="$(go mod download -json "$MODULE@$VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [ -d "$source/config/components" ] || die "no config/components in $source"
    cp "$source"/config/components/crd/bases/kueue.x-k8s.io_*.yaml "$DIR.partial/crds/"
    cp "$source/config/components/webhook/manifests.yaml" "$DIR.partial/webhooks.yaml"
    chmod -R u+w "$DIR.partial"
    rm -rf "$DIR"
    mv "$DIR.partial" "$DIR"
}

case "${1:-}" in
    build) build ;;
    dir) echo "$DIR" ;;
    *) die "usage: $0 build | dir" ;;
esac
