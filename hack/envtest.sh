#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for the tests (envtest style): etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler as local processes, no kubelet
# (hack/cluster.sh adds a real node: it builds kubelet and kube-proxy here too).
#
#   hack/envtest.sh build        build the pinned binaries into the cache (once per machine)
#   hack/envtest.sh start DIR    build what is missing, start everything on random free ports,
#                                wait for /readyz, write DIR/kubeconfig (admin, TLS verified)
#   hack/envtest.sh stop DIR     stop it: the API server before etcd (both at once can hang)
#   hack/envtest.sh bin          print the directory holding the binaries
#
# LIPIZZANER_ENVTEST_CONTROLLERS adds controllers to the controller manager's few (comma-
# separated, e.g. node-lifecycle-controller,taint-eviction-controller), and
# LIPIZZANER_ENVTEST_CONTROLLER_FLAGS adds its flags (--node-monitor-grace-period=6s).
#
# The binaries are built from k8s.io/kubernetes at the version pinned in hack/envtest/go.mod
# and cached outside the repository, under $LIPIZZANER_ENVTEST_CACHE (default
# ~/.cache/lipizzaner/envtest), keyed by that version. etcd is Debian's `etcd-server`.
# DIR also gets: pki/ (CA, serving and client certificates, service-account keys),
# admin-token, ports.env, and one log per process.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
MODULE="$HERE/envtest"
VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$MODULE/go.mod")"
BIN="${LIPIZZANER_ENVTEST_CACHE:-$HOME/.cache/lipizzaner/envtest}/$VERSION"
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
# hack/cluster.sh's node address: the API server then also listens there (for pods: the
# `kubernetes` Service's endpoint) and its certificate names it.
NODE_IP="${LIPIZZANER_ENVTEST_NODE_IP:-}"
CONTROLLERS=(garbage-collector-controller namespace-controller serviceaccount-controller
    job-controller serviceaccount-token-controller root-ca-certificate-publisher-controller
    clusterrole-aggregation-controller disruption-controller pod-garbage-collector-controller)

die() { echo "envtest: $*" >&2; exit 2; }

build() {
    local missing=()
    for command in "${COMMANDS[@]}"; do
        [ -x "$BIN/$command" ] || missing+=("k8s.io/kubernetes/cmd/$command")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v go >/dev/null || die "go is needed to build ${missing[*]} (see .ci/run)"
    echo "envtest: building ${missing[*]} at $VERSION into $BIN (several minutes, once)" >&2
    mkdir -p "$BIN.partial"
    # The version stamps Kubernetes' own build sets (hack/lib/version.sh): without them
    # every component reports v0.0.0-master and kubectl refuses to parse it.
    local minor="${VERSION#v1.}"
    minor="${minor%%.*}"
    local stamps=""
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        stamps+=" -X $package.gitVersion=$VERSION -X $package.gitMajor=1"
        stamps+=" -X $package.gitMinor=$minor -X $package.gitTreeState=clean"
    done
    (cd "$MODULE" && go build -trimpath -ldflags="-s -w$stamps" -o "$BIN.partial/" "${missing[@]}")
    mkdir -p "$BIN"
    mv "$BIN.partial"/* "$BIN/"
    rmdir "$BIN.partial"
}

free_ports() {  # N free TCP ports on 127.0.0.1
    python3 - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

certificates() {  # a CA, the API server's serving certificate, an admin client certificate
    local pki="$1/pki"
    mkdir -p "$pki"
    openssl_quiet() { openssl "$@" 2>/dev/null; }
    openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=envtest-ca" \
        -keyout "$pki/ca.key" -out "$pki/ca.crt"
    openssl_quiet req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
        -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes.default.svc%s\n' \
        "${NODE_IP:+,IP:$NODE_IP}" >"$pki/apiserver.ext"
    openssl_quiet x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 3650 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt"
    # Client certificates authenticate as CN (user) and O (groups).
    openssl_quiet req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=envtest-admin" \
        -keyout "$pki/admin.key" -out "$pki/admin.csr"
    openssl_quiet x509 -req -in "$pki/admin.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 3650 -out "$pki/admin.crt"
    openssl_quiet genrsa -out "$pki/sa.key" 2048
    openssl_quiet rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
}

kubeconfig() {  # DIR SERVER USER-YAML > kubeconfig
    local ca
    ca="$(base64 -w0 <"$1/pki/ca.crt")"
    cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster: {server: "$2", certificate-authority-data: "$ca"}
users:
- name: envtest
  user: $3
contexts:
- name: envtest
  context: {cluster: envtest, user: envtest, namespace: default}
current-context: envtest
EOF
}

wait_ready() {  # DIR URL TOKEN NAME PID
    local deadline=$((SECONDS + 120))
    until curl -sf --cacert "$1/pki/ca.crt" -H "Authorization: Bearer $3" "$2/readyz" >/dev/null; do
        kill -0 "$5" 2>/dev/null || die "$4 exited; see $1/$4.log"
        [ $SECONDS -lt $deadline ] || die "$4 not ready after 120 s; see $1/$4.log"
        sleep 0.2
    done
}

start() {
    local dir="$1"
    build
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [ -f "$dir/pids" ] && die "$dir already holds a running control plane (stop it first)"
    certificates "$dir"
    local token
    token="$(openssl rand -hex 16)"
    echo "$token" >"$dir/admin-token"
    printf '%s,envtest-admin,envtest-admin,"system:masters"\n' "$token" >"$dir/pki/tokens.csv"
    read -r etcd_port peer_port api_port kcm_port scheduler_port <<<"$(free_ports 5)"
    local server="https://127.0.0.1:$api_port"
    echo "ETCD_PORT=$etcd_port API_PORT=$api_port SERVER=$server" >"$dir/ports.env"

    etcd --name envtest --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "envtest=http://127.0.0.1:$peer_port" \
        >"$dir/etcd.log" 2>&1 &
    echo "etcd $!" >"$dir/pids"

    # Alone: loopback only, no endpoint for the `kubernetes` Service. With a node: every
    # address, and the node's as that endpoint (kube-proxy routes 10.0.0.1 there).
    local where=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none)
    [ -n "$NODE_IP" ] && where=(--bind-address 0.0.0.0 --advertise-address "$NODE_IP" --endpoint-reconciler-type lease)
    "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        "${where[@]}" --secure-port "$api_port" \
        --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
        --client-ca-file "$dir/pki/ca.crt" \
        --token-auth-file "$dir/pki/tokens.csv" \
        --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$dir/pki/sa.pub" \
        --service-account-signing-key-file "$dir/pki/sa.key" \
        --service-cluster-ip-range 10.0.0.0/24 \
        --allow-privileged \
        --kubelet-client-certificate "$dir/pki/admin.crt" --kubelet-client-key "$dir/pki/admin.key" \
        --kubelet-certificate-authority "$dir/pki/ca.crt" \
        --kubelet-preferred-address-types InternalIP \
        --cert-dir "$dir/pki" \
        >"$dir/kube-apiserver.log" 2>&1 &
    local api_pid=$!
    echo "kube-apiserver $api_pid" >>"$dir/pids"
    wait_ready "$dir" "$server" "$token" kube-apiserver "$api_pid"

    kubeconfig "$dir" "$server" "{token: \"$token\"}" >"$dir/kubeconfig"
    kubeconfig "$dir" "$server" \
        "{client-certificate: \"$dir/pki/admin.crt\", client-key: \"$dir/pki/admin.key\"}" \
        >"$dir/kubeconfig-cert"

    # Only the controllers an API-level test meets: garbage collection of owned objects,
    # namespaces (their deletion, their default ServiceAccount and root CA), pod
    # disruption budgets and Jobs (the ensemble search). No node controllers: there are no
    # kubelets.
    # With hack/cluster.sh's node: every default controller, as a cluster runs them
    # (Deployments, EndpointSlices for kube-proxy, the node lifecycle).
    local controllers
    controllers="$(IFS=,; echo "${CONTROLLERS[*]}")"
    [ -n "${LIPIZZANER_ENVTEST_CONTROLLERS:-}" ] && controllers+=",$LIPIZZANER_ENVTEST_CONTROLLERS"
    [ -n "$NODE_IP" ] && controllers="*"
    local extra_flags
    read -r -a extra_flags <<<"${LIPIZZANER_ENVTEST_CONTROLLER_FLAGS:-}"
    "$BIN/kube-controller-manager" \
        --kubeconfig "$dir/kubeconfig" \
        --authentication-kubeconfig "$dir/kubeconfig" \
        --authorization-kubeconfig "$dir/kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$kcm_port" \
        --service-account-private-key-file "$dir/pki/sa.key" \
        --root-ca-file "$dir/pki/ca.crt" \
        --controllers "$controllers" \
        --leader-elect=false "${extra_flags[@]}" \
        >"$dir/kube-controller-manager.log" 2>&1 &
    echo "kube-controller-manager $!" >>"$dir/pids"

    # The scheduler binds pods to Nodes that tests register (fake GPU nodes, say).
    "$BIN/kube-scheduler" \
        --kubeconfig "$dir/kubeconfig" \
        --authentication-kubeconfig "$dir/kubeconfig" \
        --authorization-kubeconfig "$dir/kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$scheduler_port" \
        --leader-elect=false \
        >"$dir/kube-scheduler.log" 2>&1 &
    echo "kube-scheduler $!" >>"$dir/pids"
    echo "$dir/kubeconfig"
}

stop() {
    local dir="$1" name pid
    [ -f "$dir/pids" ] || return 0
    # Reverse order: the scheduler and controller manager, the API server, etcd last.
    tac "$dir/pids" | while read -r name pid; do
        kill -CONT "$pid" 2>/dev/null || true  # a test may have frozen it
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$dir/pids"
}

case "${1:-}" in
    build) build ;;
    bin) echo "$BIN" ;;
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 build | bin | start DIR | stop DIR" ;;
esac
