#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine: the control plane of hack/envtest.sh, plus
# a real node (kubelet, containerd with runc, a CNI bridge), kube-proxy, cluster DNS
# (CoreDNS) and object storage (SeaweedFS's S3 server). Run as root.
#
#   hack/cluster.sh build        build what is missing into the cache (once per machine)
#   hack/cluster.sh start DIR    start everything; DIR/kubeconfig is the admin's
#   hack/cluster.sh stop DIR     stop it and leave no process, mount, namespace or bridge
#   hack/cluster.sh bin          print the folder holding kubectl, helm, prometheus, ...
#
# The pod network is the bridge lpz0 (10.244.0.0/24; the host is 10.244.0.1), with no
# masquerade and no route off the machine: pods reach each other, the host's services
# (the API server, DNS, S3) and nothing else. Cluster DNS answers cluster.local only.
# Versions: the Kubernetes commands are hack/envtest.sh's (kubelet and kube-proxy built
# beside them); the others are pinned below. Binaries are cached outside the repository,
# under $LIPIZZANER_CLUSTER_CACHE (default ~/.cache/lipizzaner/cluster).
# DIR also gets: ports.env (API, S3), s3.env (the bucket's credentials), a log per process.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${LIPIZZANER_CLUSTER_CACHE:-$HOME/.cache/lipizzaner/cluster}"
HELM_VERSION=v4.3.2
COREDNS_VERSION=v1.15.0
# Prometheus with the Kubernetes service discovery (Debian's is built without it), and no
# other discovery: a quicker build. Its Go module's v0.3XX.Y is Prometheus 3.XX.Y.
PROMETHEUS_VERSION=v0.316.0
# SeaweedFS: the version pinned in hack/cluster/seaweedfs/go.mod (built through that module).
SEAWEEDFS_VERSION="$(awk '$1 == "require" && $2 == "github.com/seaweedfs/seaweedfs" {print $3}' \
    "$HERE/cluster/seaweedfs/go.mod")"
BRIDGE=lpz0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
NODE=lipizzaner-node
PAUSE_IMAGE=lipizzaner.local/pause:1
S3_BUCKET=lipizzaner

die() { echo "cluster: $*" >&2; exit 2; }
ENVTEST_BIN="$("$HERE/envtest.sh" bin)"

tool() { echo "$CACHE/tools/$1-$2/$1"; }  # NAME VERSION: where that build is cached
HELM="$(tool helm "$HELM_VERSION")"
COREDNS="$(tool coredns "$COREDNS_VERSION")"
PROMETHEUS="$(tool prometheus "$PROMETHEUS_VERSION")"
WEED="$(tool weed "${SEAWEEDFS_VERSION##*-}")"

build_tool() {  # BINARY COMMAND...: run COMMAND with GOBIN set, once, into BINARY's folder
    local binary=$1; shift
    [ -x "$binary" ] && return 0
    command -v go >/dev/null || die "go is needed to build $(basename "$binary") (see .ci/run)"
    echo "cluster: building $(basename "$binary") into $(dirname "$binary") (minutes, once)" >&2
    rm -rf "$(dirname "$binary").partial"
    mkdir -p "$(dirname "$binary").partial"
    GOBIN="$(dirname "$binary").partial" "$@"
    mv "$(dirname "$binary").partial" "$(dirname "$binary")"
}

build() {
    "$HERE/envtest.sh" build
    build_tool "$HELM" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
    build_tool "$COREDNS" go install "github.com/coredns/coredns@$COREDNS_VERSION"
    build_tool "$PROMETHEUS" go install -tags remove_all_sd,enable_kubernetes_sd \
        "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION"
    # shellcheck disable=SC2016  # GOBIN is build_tool's, expanded by that inner shell
    build_tool "$WEED" bash -c 'cd "$1" && go build -trimpath -ldflags="-s -w" -o "$GOBIN/" \
        github.com/seaweedfs/seaweedfs/weed' _ "$HERE/cluster/seaweedfs"
}

bin() {  # one folder with every command: links to the envtest and tool binaries
    mkdir -p "$CACHE/bin"
    for command in "$ENVTEST_BIN"/* "$HELM" "$COREDNS" "$PROMETHEUS" "$WEED"; do
        ln -sfn "$command" "$CACHE/bin/$(basename "$command")"
    done
    echo "$CACHE/bin"
}

need() {
    local missing=()
    for command in containerd runc ip iptables mmdebstrap buildah ctr; do
        command -v "$command" >/dev/null || missing+=("$command")
    done
    [ -x /usr/lib/cni/bridge ] || missing+=("containernetworking-plugins")
    [ -x /usr/bin/catatonit ] || missing+=("catatonit")
    [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: apt-get install containerd runc \
containernetworking-plugins iproute2 iptables catatonit buildah mmdebstrap (see .ci/run)"
    [ "$(id -u)" = 0 ] || die "a node needs root"
}

free_ports() {  # N free TCP ports
    python3 - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("0.0.0.0", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

remember() { echo "$1 $2" >>"$DIR/node-pids"; }  # NAME PID, stopped in reverse order

wait_for() {  # SECONDS WHAT COMMAND...: until COMMAND succeeds
    local deadline=$((SECONDS + $1)) what="$2"
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what: not ready after ${deadline}s; see $DIR/*.log"
        sleep 0.5
    done
}

network() {
    ip link show "$BRIDGE" >/dev/null 2>&1 && die "bridge $BRIDGE exists: another cluster runs"
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    mkdir -p "$DIR/cni"
    cat >"$DIR/cni/10-lipizzaner.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "lipizzaner",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "$NODE_IP/32"}, {"dst": "10.0.0.0/24"}],
              "dataDir": "$DIR/cni/ipam"}},
    {"type": "loopback"}
  ]
}
EOF
}

containerd_start() {
    local root="$DIR/containerd"
    mkdir -p "$root"
    cat >"$root/config.toml" <<EOF
version = 2
root = "$root/root"
state = "$root/state"
[grpc]
  address = "$root/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
EOF
    containerd --config "$root/config.toml" >"$DIR/containerd.log" 2>&1 &
    remember containerd $!
    wait_for 60 containerd ctr --address "$root/containerd.sock" version
}

ctr_() { ctr --address "$DIR/containerd/containerd.sock" -n k8s.io "$@"; }

pause_image() {  # the sandbox image, built from Debian's static catatonit (no registry)
    local archive="$CACHE/pause.tar"
    if [ ! -f "$archive" ]; then
        mkdir -p "$CACHE"
        local work
        work="$(buildah --ulimit nofile=1024:1024 from scratch)"
        buildah copy "$work" /usr/bin/catatonit /catatonit >/dev/null
        buildah config --entrypoint '["/catatonit", "-P"]' "$work"
        buildah commit -q "$work" "$PAUSE_IMAGE" >/dev/null
        buildah rm "$work" >/dev/null
        buildah push -q "$PAUSE_IMAGE" "docker-archive:$archive.partial:$PAUSE_IMAGE"
        mv "$archive.partial" "$archive"
    fi
    ctr_ images import "$archive" >/dev/null
}

node_certificates() {  # the kubelet's serving certificate, for the node's address
    local pki="$DIR/pki"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$NODE" \
        -keyout "$pki/kubelet.key" -out "$pki/kubelet.csr" 2>/dev/null
    printf 'subjectAltName=IP:%s,DNS:%s\n' "$NODE_IP" "$NODE" >"$pki/kubelet.ext"
    openssl x509 -req -in "$pki/kubelet.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 3650 -extfile "$pki/kubelet.ext" -out "$pki/kubelet.crt" 2>/dev/null
}

kubelet_start() {
    local port
    read -r port <<<"$(free_ports 1)"
    echo "KUBELET_PORT=$port" >>"$DIR/ports.env"
    node_certificates
    mkdir -p "$DIR/kubelet" "$DIR/manifests"
    cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 on these machines, with the cgroupfs driver; no swap accounting.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
address: $NODE_IP
port: $port
readOnlyPort: 0
healthzPort: 0
tlsCertFile: $DIR/pki/kubelet.crt
tlsPrivateKeyFile: $DIR/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: ""
staticPodPath: $DIR/manifests
# Nothing to evict for: the tests' pods are all that runs, on a disk shared with the host.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
localStorageCapacityIsolation: false
podCIDR: $POD_CIDR
maxPods: 60
EOF
    "$ENVTEST_BIN/kubelet" \
        --config "$DIR/kubelet.yaml" \
        --kubeconfig "$DIR/kubeconfig-cert" \
        --root-dir "$DIR/kubelet" \
        --cert-dir "$DIR/pki" \
        --hostname-override "$NODE" \
        --node-ip "$NODE_IP" \
        >"$DIR/kubelet.log" 2>&1 &
    remember kubelet $!
    wait_for 120 "node $NODE" node_ready
    # The node registers tainted not-ready, and only the node-lifecycle controller lifts
    # that taint; envtest does not run it (its tests register nodes of their own).
    kubectl_ taint nodes "$NODE" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
}

kubectl_() { "$ENVTEST_BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }

node_ready() {
    [ "$(kubectl_ get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

kube_proxy_start() {
    local ports
    read -r -a ports <<<"$(free_ports 2)"
    "$ENVTEST_BIN/kube-proxy" \
        --kubeconfig "$DIR/kubeconfig" \
        --hostname-override "$NODE" \
        --proxy-mode iptables \
        --cluster-cidr "$POD_CIDR" \
        --conntrack-max-per-core 0 \
        --healthz-bind-address "127.0.0.1:${ports[0]}" \
        --metrics-bind-address "127.0.0.1:${ports[1]}" \
        >"$DIR/kube-proxy.log" 2>&1 &
    remember kube-proxy $!
}

dns_start() {
    cat >"$DIR/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $DIR/kubeconfig envtest
        pods verified
    }
}
.:53 {
    bind $NODE_IP
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
    "$COREDNS" -conf "$DIR/Corefile" >"$DIR/coredns.log" 2>&1 &
    remember coredns $!
}

s3_start() {
    local ports key secret
    read -r -a ports <<<"$(free_ports 8)"
    key="lipizzaner$(openssl rand -hex 4)"
    secret="$(openssl rand -hex 16)"
    mkdir -p "$DIR/seaweedfs"
    cat >"$DIR/seaweedfs/s3.json" <<EOF
{"identities": [{"name": "lipizzaner", "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
    "$WEED" server -dir "$DIR/seaweedfs" -ip "$NODE_IP" -ip.bind 0.0.0.0 \
        -master.port "${ports[0]}" -volume.port "${ports[1]}" -filer.port "${ports[2]}" \
        `# every gRPC port given: weed's default, port + 10000, can pass 65535` \
        -master.port.grpc "${ports[4]}" -volume.port.grpc "${ports[5]}" \
        -filer.port.grpc "${ports[6]}" \
        -s3 -s3.port "${ports[3]}" -s3.port.grpc "${ports[7]}" \
        -s3.config "$DIR/seaweedfs/s3.json" \
        -volume.max 64 -master.volumeSizeLimitMB 256 \
        >"$DIR/seaweedfs.log" 2>&1 &
    remember seaweedfs $!
    echo "S3_ENDPOINT=http://$NODE_IP:${ports[3]}" >>"$DIR/ports.env"
    printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_DEFAULT_REGION=us-east-1\nS3_BUCKET=%s\n' \
        "$key" "$secret" "$S3_BUCKET" >"$DIR/s3.env"
    wait_for 120 "S3 on :${ports[3]}" curl -sf -o /dev/null "http://$NODE_IP:${ports[3]}/status"
    wait_for 120 "bucket $S3_BUCKET" bucket "$NODE_IP:${ports[0]}.${ports[4]}"
}

bucket() {  # MASTER (host:port.grpcport): the runs' bucket, made with weed's own shell
    echo "s3.bucket.create -name $S3_BUCKET" | "$WEED" shell -master="$1" >/dev/null 2>&1
    echo "s3.bucket.list" | "$WEED" shell -master="$1" 2>/dev/null | grep -qw "$S3_BUCKET"
}

start() {
    DIR="$1"
    need
    build
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    [ -f "$DIR/node-pids" ] && die "$DIR already holds a running cluster (stop it first)"
    : >"$DIR/node-pids"
    # A start that fails half-way leaves nothing running (its logs stay in DIR).
    trap 'echo "cluster: start failed; stopping what started (logs in $DIR)" >&2; stop "$DIR"' EXIT
    network
    # A node that stops answering is marked unreachable after 30 s (the default is 50 s),
    # so tests/e2e/test_faults.py's lost node does not outlast its run.
    LIPIZZANER_ENVTEST_NODE_IP="$NODE_IP" \
        LIPIZZANER_ENVTEST_CONTROLLER_FLAGS="--node-monitor-grace-period=30s" \
        "$HERE/envtest.sh" start "$DIR" >/dev/null
    containerd_start
    pause_image
    dns_start
    kube_proxy_start
    kubelet_start
    s3_start
    trap - EXIT
    echo "$DIR/kubeconfig"
}

stop() {
    DIR="$1"
    [ -d "$DIR" ] || return 0
    DIR="$(cd "$DIR" && pwd)"
    if [ -f "$DIR/node-pids" ]; then
        # The kubelet first (it would restart what is stopped), then the pods' sandboxes,
        # then the other node processes.
        local name pid
        grep '^kubelet ' "$DIR/node-pids" | while read -r name pid; do stop_process "$pid"; done
        if [ -S "$DIR/containerd/containerd.sock" ]; then
            for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$task" || true; done
            sleep 1
            for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$task" || true; done
            for container in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$container" || true; done
        fi
        tac "$DIR/node-pids" | while read -r name pid; do stop_process "$pid"; done
        rm -f "$DIR/node-pids"
    fi
    "$HERE/envtest.sh" stop "$DIR"
    # What a pod leaves: its network namespace, its mounts (kubelet volumes, rootfs), and
    # the node's copies of the images (gigabytes: the archives stay in the cache).
    for netns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$netns" || true; done
    { grep -E " $DIR/" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r mount; do
        umount -l "$mount" 2>/dev/null || true
    done
    rm -rf "$DIR/containerd/root" "$DIR/kubelet" "$DIR/seaweedfs"
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE"; fi
    # kube-proxy's chains, whichever rules it left.
    for table in nat filter mangle; do
        iptables-save -t "$table" 2>/dev/null | grep -q KUBE- || continue
        iptables-save -t "$table" | grep -v KUBE- | iptables-restore -T "$table" 2>/dev/null || true
    done
    return 0
}

stop_process() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
}

case "${1:-}" in
    build) build ;;
    bin) bin ;;
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 build | bin | start DIR | stop DIR" ;;
esac
