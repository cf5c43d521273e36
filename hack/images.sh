#!/usr/bin/env bash
# The operator and cell images, built from the repository's own Dockerfiles with buildah
# on a Debian bookworm base made from Debian's packages (no registry is needed), and
# loaded into hack/cluster.sh's node. Run as root.
#
#   hack/images.sh build [DIR]   build both images (cached by the inputs' digest); with
#                                DIR, a running hack/cluster.sh cluster, load them into it
#   hack/images.sh refs          print the image references the chart's defaults name
#
# The images are tagged with the chart's default references (repository:appVersion), so
# `helm install` with no image values runs them; pods use them as IfNotPresent, never
# pulling. Archives are cached under $LIPIZZANER_IMAGES_CACHE
# (default ~/.cache/lipizzaner/images); timings go to that folder's build-times.tsv.
# $PYTHON (default python3) reads the chart's values: it needs PyYAML.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${LIPIZZANER_IMAGES_CACHE:-$HOME/.cache/lipizzaner/images}"
BASE=lipizzaner.local/debian-python:bookworm
# buildah's limits within the hard ones (no CAP_SYS_RESOURCE here).
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

die() { echo "images: $*" >&2; exit 2; }

chart_value() {  # KEY of values.yaml (a repository), or the chart's appVersion
    "${PYTHON:-python3}" - "$ROOT/helm/lipizzaner" "$1" <<'EOF'
import sys, yaml
chart, key = sys.argv[1], sys.argv[2]
if key == "appVersion":
    print(yaml.safe_load(open(f"{chart}/Chart.yaml"))["appVersion"])
else:
    values = yaml.safe_load(open(f"{chart}/values.yaml"))
    for part in key.split("."):
        values = values[part]
    print(values)
EOF
}

refs() {
    local tag
    tag="$(chart_value appVersion)"
    echo "operator $(chart_value image.repository):$tag"
    echo "cell $(chart_value cell.image.repository):$tag"
}

digest() {  # DOCKERFILE SOURCE: what an image depends on, its build context's files
    (cd "$ROOT" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --exclude=__pycache__ --exclude='*.egg-info' --exclude=build \
        -cf - "$1" hack/images.sh core "$2") | sha256sum | cut -c1-16
}

timed() {  # WHAT COMMAND...: run it, and record its seconds
    local what="$1" started=$SECONDS
    shift
    "$@"
    printf '%s\t%s\t%d\n' "$(date -u +%FT%TZ)" "$what" $((SECONDS - started)) >>"$CACHE/build-times.tsv"
}

base() {  # a Debian bookworm root with Python 3.11 and pip, from Debian's own packages
    local archive="$CACHE/base.tar"
    if [ ! -f "$archive" ]; then
        mmdebstrap --quiet --variant=minbase --include=python3,python3-pip,ca-certificates \
            bookworm "$CACHE/rootfs.tar"
        local work
        work="$(buildah "${LIMITS[@]}" from scratch)"
        buildah add "$work" "$CACHE/rootfs.tar" / >/dev/null
        # Debian marks its Python externally managed; these images are that management.
        buildah config --env PIP_BREAK_SYSTEM_PACKAGES=1 --env LANG=C.UTF-8 "$work"
        buildah commit -q "$work" "$BASE" >/dev/null
        buildah rm "$work" >/dev/null
        buildah push -q "$BASE" "docker-archive:$archive.partial:$BASE"
        mv "$archive.partial" "$archive"
        rm -f "$CACHE/rootfs.tar"
    fi
    buildah images -q "$BASE" >/dev/null 2>&1 || buildah pull -q "docker-archive:$archive" >/dev/null
}

image() {  # NAME DOCKERFILE SOURCE: build it unless its archive is current
    local name="$1" dockerfile="$2" source="$3" ref archive
    ref="$(refs | awk -v n="$name" '$1 == n {print $2}')"
    archive="$CACHE/$name-$(digest "$dockerfile" "$source").tar"
    if [ ! -f "$archive" ]; then
        # The host's CA bundle and pip settings, so pip reaches PyPI as it does here.
        local mounts=() certificates="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
        [ -f "$certificates" ] && mounts+=(--volume "$certificates:/etc/ssl/certs/host-ca.crt:ro"
            --env PIP_CERT=/etc/ssl/certs/host-ca.crt)
        buildah build "${LIMITS[@]}" --network host --layers --quiet \
            --build-arg "BASE=$BASE" "${mounts[@]}" \
            -f "$ROOT/$dockerfile" -t "$ref" "$ROOT" >/dev/null
        rm -f "$CACHE/$name"-*.tar
        buildah push -q "$ref" "docker-archive:$archive.partial:$ref"
        mv "$archive.partial" "$archive"
    fi
    echo "$archive"
}

load() {  # DIR ARCHIVE: into the node's containerd
    ctr --address "$1/containerd/containerd.sock" -n k8s.io images import "$2" >/dev/null
}

build() {
    command -v buildah >/dev/null && command -v mmdebstrap >/dev/null \
        || die "needs buildah and mmdebstrap (apt-get install buildah mmdebstrap; see .ci/run)"
    mkdir -p "$CACHE"
    timed base base
    local operator cell
    operator="$(timed operator image operator operator/Dockerfile operator | tail -1)"
    cell="$(timed cell image cell cell_image/Dockerfile cell_image | tail -1)"
    if [ -n "${1:-}" ]; then
        timed load-operator load "$1" "$operator"
        timed load-cell load "$1" "$cell"
    fi
    refs
}

case "${1:-}" in
    build) [ $# -le 2 ] || die "usage: $0 build [DIR]"; build "${2:-}" ;;
    refs) refs ;;
    *) die "usage: $0 build [DIR] | refs" ;;
esac
