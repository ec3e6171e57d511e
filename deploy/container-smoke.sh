#!/usr/bin/env bash
# deploy/container-smoke.sh [BIN_DIR]
# Builds the image from the repository's Dockerfile with podman and tries it, failing on the
# first problem:
#   1. the image: base images are local stand-ins made from Debian's packages (mmdebstrap),
#      under the Dockerfile's names; the build stage is fed the binaries of BIN_DIR
#      (`--build-arg PREBUILT`) instead of running cargo; every binary runs in the image;
#   2. cdn-cluster in a container on the host's network: a GET misses, the same GET hits, a
#      purge without the token is refused, `cdnctl purge` (run in the container) with it is
#      acknowledged and the next GET misses again, /metrics has cdn_requests_total, and
#      SIGTERM ends it with exit code 0 within the grace period;
#   3. deploy/kubernetes/cdn.yaml under `podman kube play`: the pods its StatefulSet and
#      Deployment describe, rendered as Pods (see deploy/README.md for why and what is
#      changed), on a private internal network; a GET through an edge pod reaches a node pod
#      (miss, then hit), then everything is torn down.
# BIN_DIR: the six binaries (cdn-cluster cache-node edge origin-stub loadgen cdnctl) built for
# glibc <= 2.36 (Debian bookworm's); default target/release, built if missing. CI feeds
# target/debug. Copies of them are stripped of debug info before going into the image.
# Needs root (rootful podman) and: podman, runc, mmdebstrap, curl, binutils (objdump,
# strip), python3 (PyYAML, or python3-venv to install it). On Debian:
#   apt-get install podman runc mmdebstrap binutils curl python3-venv
# State: CDN_SMOKE_DIR (default /var/tmp/cdn-container-smoke) holds a private podman store,
# configuration and network definitions (nothing is written under /etc/containers) and the
# stand-in base images (about 130 MB), which later runs reuse: remove the directory to start
# over. Outside it, podman keeps its blob-info cache in /var/lib/containers/cache and netavark
# its run-time state in /run/containers/networks and its (emptied) NETAVARK firewall chains.
# The cdn image, the containers, pods and network a run makes are removed when it ends.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="${CDN_SMOKE_DIR:-/var/tmp/cdn-container-smoke}"
subnet_prefix="${CDN_SMOKE_SUBNET:-10.89.77}"   # a /24 for the kube play network
image=localhost/cdn:smoke
cluster_ctr=cdn-smoke-cluster
net=cdn-smoke-net
grace=10            # seconds: `podman stop`'s (and docker's) default before SIGKILL
binaries=(cdn-cluster cache-node edge origin-stub loadgen cdnctl)
start_all=$SECONDS

say() { printf '%s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
phase() { say "== $* [$((SECONDS - start_all)) s]"; }

[ "$(id -u)" -eq 0 ] || fail "run as root (the smoke uses rootful podman)"
for tool in podman runc mmdebstrap curl objdump strip flock python3; do
    command -v "$tool" >/dev/null ||
        fail "$tool is missing; on Debian: apt-get install podman runc mmdebstrap binutils curl python3-venv"
done

mkdir -p "$state"
# One run at a time: the store, the names and the subnet are shared.
exec 9>"$state/lock"
flock -w 900 9 || fail "another container-smoke run holds $state/lock"

work="$(mktemp -d "$state/run.XXXXXX")"
log="$work/podman.log"

# A private podman configuration. runc with cgroupfs and no default ulimits: on this kind of
# host crun refuses hybrid cgroups and setrlimit, and podman's default nofile ulimit
# (1048576) is above what the host allows, so `podman run` fails without these.
mkdir -p "$state/conf" "$state/storage" "$state/run" "$state/networks"
cat >"$state/conf/containers.conf" <<EOF
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_config_dir = "$state/networks"
EOF
cat >"$state/conf/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$state/storage"
runroot = "$state/run"
EOF
export CONTAINERS_CONF="$state/conf/containers.conf"
export CONTAINERS_STORAGE_CONF="$state/conf/storage.conf"

pm() { podman "$@" 2>>"$log"; }
show_log() {
    if [ -s "$log" ]; then
        say "-- podman's messages (last 30 lines):" >&2
        tail -n 30 "$log" >&2
    fi
}
remove_leftovers() {   # the store is this script's own: whatever is in it, it made
    podman pod rm -a -f -t 0 >/dev/null 2>&1 || true
    podman rm -a -f -t 0 >/dev/null 2>&1 || true
    podman network rm -f "$net" >/dev/null 2>&1 || true
}
cleanup() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ]; then
        show_log
        if podman container exists "$cluster_ctr" 2>/dev/null; then
            say "-- $cluster_ctr's output (last 20 lines):" >&2
            podman logs "$cluster_ctr" 2>&1 | tail -n 20 >&2
        fi
    fi
    remove_leftovers
    podman rmi -f "$image" >/dev/null 2>&1
    podman image prune -f >/dev/null 2>&1
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
remove_leftovers   # of a run that was killed

disk_check() {
    local avail_kib
    avail_kib="$(df -Pk "$state" | awk 'NR == 2 {print $4}')"
    say "disk: $((avail_kib / 1024 / 1024)) GiB free on $(df -P "$state" | awk 'NR == 2 {print $6}') (before $1)"
    [ "$avail_kib" -ge $((3 * 1024 * 1024)) ] || fail "less than 3 GiB free for $1"
}

say "podman $(podman version --format '{{.Client.Version}}'), $(runc --version | head -n 1), mmdebstrap $(mmdebstrap --version | awk '{print $2}')"

# ---------------------------------------------------------------------------------------
phase "binaries"
if [ -n "${1:-}" ]; then
    bin="$(cd "$1" && pwd)"
else
    bin="$root/target/release"
    missing=""
    for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || missing=1; done
    if [ -n "$missing" ]; then
        say "building release binaries (serialised with other builds on /tmp/build.lock)"
        (cd "$root" && flock /tmp/build.lock nice -n 19 cargo build --release --locked \
            -p cdn-cluster -p cache-node -p edge -p origin-stub -p loadgen -p cdnctl)
    fi
fi
maxglibc=""
for b in "${binaries[@]}"; do
    [ -x "$bin/$b" ] || fail "$bin/$b is missing (BIN_DIR must hold: ${binaries[*]})"
    v="$(objdump -T "$bin/$b" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
    maxglibc="$(printf '%s\n%s\n' "$maxglibc" "$v" | sort -V | tail -n 1)"
done
say "binaries from $bin; the newest glibc symbol they use: GLIBC_$maxglibc"

# ---------------------------------------------------------------------------------------
phase "base images (local stand-ins under the Dockerfile's names)"
if pm image exists docker.io/library/debian:bookworm-slim &&
    pm image exists docker.io/library/rust:1.95-bookworm; then
    say "reusing the stand-ins made by an earlier run (remove $state to remake them)"
else
    disk_check "mmdebstrap"
    # Debian bookworm, minbase (essential packages and apt), without the documentation
    # bookworm-slim also leaves out.
    timeout 900 mmdebstrap --quiet --variant=minbase \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$work/rootfs.tar" ${CDN_SMOKE_MIRROR:+"$CDN_SMOKE_MIRROR"}
    # With what Docker Hub's debian image has in its configuration: PATH (import sets none)
    # and bash as the command.
    pm import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change 'LABEL org.opencontainers.image.description="stand-in made by deploy/container-smoke.sh: Debian bookworm minbase from mmdebstrap"' \
        "$work/rootfs.tar" docker.io/library/debian:bookworm-slim >/dev/null
    rm -f "$work/rootfs.tar"
    # The build stage only copies with PREBUILT set: the same file system serves.
    pm tag docker.io/library/debian:bookworm-slim docker.io/library/rust:1.95-bookworm
    say "made docker.io/library/debian:bookworm-slim and docker.io/library/rust:1.95-bookworm"
fi
pm images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | sed 's/^/  /'

# ---------------------------------------------------------------------------------------
phase "podman build -f Dockerfile --build-arg PREBUILT=prebuilt"
disk_check "the image build"
mkdir -p "$work/context/prebuilt"
for b in "${binaries[@]}"; do
    strip --strip-debug -o "$work/context/prebuilt/$b" "$bin/$b"
done
pm build --quiet --pull=never --isolation chroot --build-arg PREBUILT=prebuilt \
    -f "$root/Dockerfile" -t "$image" "$work/context" >/dev/null ||
    fail "podman build failed"
rm -rf "$work/context"
pm image prune -f >/dev/null   # the build stage's image
say "built $image ($(pm image inspect "$image" --format '{{.Size}}' | awk '{printf "%d MB", $1 / 1e6}'))"
imgglibc="$(pm run --rm --network none "$image" ldd --version | awk 'NR == 1 {print $NF}')"
[ "$(printf '%s\n%s\n' "$maxglibc" "$imgglibc" | sort -V | tail -n 1)" = "$imgglibc" ] ||
    fail "the binaries need GLIBC_$maxglibc, the image has $imgglibc: build them on bookworm (or with the Dockerfile's cargo stage)"
# shellcheck disable=SC2016  # $@ and $b are the container shell's
versions="$(pm run --rm --network none "$image" sh -c \
    'id -u; for b in "$@"; do "$b" --version || exit 1; done' sh "${binaries[@]}")" ||
    fail "a binary does not run in the image"
[ "$(printf '%s\n' "$versions" | head -n 1)" = 10001 ] || fail "the image does not run as uid 10001"
say "ok: glibc $imgglibc in the image >= GLIBC_$maxglibc; uid 10001; all run: $(printf '%s\n' "$versions" | tail -n +2 | paste -sd, - | sed 's/,/, /g')"

# ---------------------------------------------------------------------------------------
xcache() {   # X-Cache of a GET
    curl -sS -m 10 -D - -o /dev/null "$1" | tr -d '\r' |
        awk -F': ' 'tolower($1) == "x-cache" {print $2}'
}
expect_xcache() {   # URL, extended regex, what it means
    local got
    got="$(xcache "$1")" || fail "GET $1 failed"
    [[ "$got" =~ $2 ]] || fail "GET $1: X-Cache '$got', expected $3 ($2)"
    say "ok: GET ${1#http://} -> X-Cache: $got ($3)"
}

running() {   # PID: exists and is not a zombie
    local st
    st="$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}
sigterm_and_wait() {   # GRACE PID...: SIGTERM to each, then polls until all are gone;
    local grace_s=$1 t0 p left      # prints the milliseconds taken, fails after GRACE s
    shift
    t0=$(date +%s%N)
    kill -TERM "$@"
    while :; do
        left=""
        for p in "$@"; do running "$p" && left=1; done
        [ -z "$left" ] && break
        [ $(($(date +%s%N) - t0)) -lt $((grace_s * 1000000000)) ] || return 1
        sleep 0.05
    done
    echo $((($(date +%s%N) - t0) / 1000000))
}

phase "cdn-cluster in a container (host network, ephemeral ports on 127.0.0.1)"
token="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
pm run -d --name "$cluster_ctr" --network host -e CDN_ADMIN_TOKEN="$token" \
    "$image" cdn-cluster --edge-port 0 --admin-port 0 >/dev/null
up=""
for _ in $(seq 300); do   # 30 s
    if podman logs "$cluster_ctr" 2>/dev/null | grep -q '^cdn-cluster is up'; then up=1; break; fi
    [ "$(pm inspect "$cluster_ctr" --format '{{.State.Running}}')" = true ] ||
        fail "cdn-cluster exited: $(podman logs "$cluster_ctr" 2>&1 | tail -n 5)"
    sleep 0.1
done
[ -n "$up" ] || fail "cdn-cluster did not say it is up within 30 s"
banner="$(podman logs "$cluster_ctr" 2>/dev/null)"
edge_url="$(printf '%s\n' "$banner" | awk '$1 == "edge-0" {print $2}')"
edge_admin="$(printf '%s\n' "$banner" | awk '$1 == "edge-0" {sub("admin=http://", "", $3); print $3}')"
if [ -z "$edge_url" ] || [ -z "$edge_admin" ]; then fail "no edge-0 addresses in: $banner"; fi
printf '%s\n' "$banner" | sed -n '/^cdn-cluster is up/,/admin token/p' | grep -v 'admin token' | sed 's/^/  /'

url="$edge_url/hello?size=64&ct=text/plain"
expect_xcache "$url" '^MISS, MISS from node-[0-9]+$' "edge miss, the node fetched from the origin"
expect_xcache "$url" '^HIT$' "edge hit"
code="$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -X POST -d '{"urls":["/hello?size=64&ct=text/plain"]}' "http://$edge_admin/purge")"
[ "$code" = 401 ] || fail "a purge without the token got $code, expected 401"
say "ok: POST /purge without the token -> 401"
purge_out="$(pm exec -e CDN_ADMIN_TOKEN="$token" "$cluster_ctr" \
    cdnctl --admin "$edge_admin" purge '/hello?size=64&ct=text/plain')" ||
    fail "cdnctl purge failed: $purge_out"
printf '%s\n' "$purge_out" | grep -q 'missing: *none' || fail "purge not acknowledged everywhere: $purge_out"
say "ok: cdnctl purge (in the container, with the token): $(printf '%s\n' "$purge_out" | head -n 1)"
expect_xcache "$url" '^MISS, MISS from node-[0-9]+$' "purged at the edge and the node"
metrics="$(curl -sS -m 10 "http://$edge_admin/metrics")" || fail "GET /metrics failed"
printf '%s\n' "$metrics" | grep -q '^cdn_requests_total{' || fail "/metrics has no cdn_requests_total"
say "ok: GET /metrics has cdn_requests_total:"
printf '%s\n' "$metrics" | grep '^cdn_requests_total{tier="edge",member="edge-0"' | sed 's/^/  /'

# SIGTERM to the container's process, as `podman stop` and `docker stop` send it, timed from
# here until the process is gone: the program's time, without podman's own steps around it
# (`podman stop -t 10` once took 117 s here, on a busy disk, for a process that exited 0).
pid="$(pm inspect "$cluster_ctr" --format '{{.State.Pid}}')"
stop_ms="$(sigterm_and_wait "$grace" "$pid")" ||
    fail "cdn-cluster did not exit within the ${grace} s grace after SIGTERM"
rc="$(timeout 300 podman wait "$cluster_ctr" 2>>"$log")" || fail "podman wait failed"
[ "$rc" = 0 ] || fail "cdn-cluster exited $rc after SIGTERM"
podman logs "$cluster_ctr" 2>/dev/null | grep -q '^shutting down' || fail "cdn-cluster did not say it was shutting down"
say "ok: SIGTERM: cdn-cluster exited with code 0 after $stop_ms ms (grace: ${grace} s, podman's and docker's default)"
pm rm "$cluster_ctr" >/dev/null

# ---------------------------------------------------------------------------------------
phase "deploy/kubernetes/cdn.yaml under podman kube play"
py=""
for cand in "$root/target/deploy-check-venv/bin/python" "$state/venv/bin/python" python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import yaml' 2>/dev/null; then py="$cand"; break; fi
done
if [ -z "$py" ]; then
    python3 -m venv "$state/venv" || fail "python3 -m venv failed (apt-get install python3-venv)"
    "$state/venv/bin/pip" install -q pyyaml==6.0.2
    py="$state/venv/bin/python"
fi
# The cluster CA and member certificate, made by the image's cache-node. The key stays
# behind as in the Secret the README creates; the mounted copies are readable by uid 10001.
mkdir -p "$work/tls-all" "$work/tls"
pm run --rm --network none --user 0 -v "$work/tls-all:/tls" "$image" cache-node init-tls --dir /tls >/dev/null
install -m 0644 "$work/tls-all/ca.pem" "$work/tls-all/member.pem" "$work/tls-all/member.key" "$work/tls/"
pm network create --internal --subnet "$subnet_prefix.0/24" "$net" >/dev/null
"$py" - "$root/deploy/kubernetes/cdn.yaml" "$image" "$subnet_prefix" "$work/tls" "$token" \
    >"$work/pods.yaml" 2>"$work/render.txt" <<'PY' || { cat "$work/render.txt" >&2; fail "rendering the pods failed"; }
# Renders the pods Kubernetes would run from the manifests, in the form podman 4.3's kube play
# runs (deploy/README.md explains each change). stdout: the pods; stderr: what was done, one
# line "ips <ip> ..." (the pods' addresses, in order: kube play --ip takes them so) and a line
# "pod <pod> <container> <ip> <http port or -> <admin port>" per member.
import copy
import re
import sys

import yaml

path, image, prefix, tls_dir, token = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
ns = "default"
origin_ip = f"{prefix}.10"
pods, notes, ips, listing = [], [], [], []

def workload_pods(doc, first_ip):
    kind, name = doc["kind"], doc["metadata"]["name"]
    spec = doc["spec"]
    out = []
    for i in range(spec.get("replicas", 1)):
        pod_name = f"{name}-{i}"
        ip = f"{prefix}.{first_ip + i}"
        tmpl = copy.deepcopy(spec["template"])
        pod_spec = tmpl["spec"]
        for c in pod_spec["containers"]:
            c["image"] = image
            env = {}
            new_env = []
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
                    new_env.append(e)
                    continue
                src = e["valueFrom"]
                if "fieldRef" in src:
                    field = src["fieldRef"]["fieldPath"]
                    value = {"metadata.name": pod_name, "metadata.namespace": ns,
                             "status.podIP": ip}.get(field)
                    if value is None:
                        sys.exit(f"{kind}/{name}: fieldRef {field} is not rendered")
                elif "secretKeyRef" in src and src["secretKeyRef"]["name"] == "cdn-admin":
                    value = token
                else:
                    sys.exit(f"{kind}/{name}: env {e['name']} from {src} is not rendered")
                env[e["name"]] = value
                new_env.append({"name": e["name"], "value": value})
            c["env"] = new_env
            def fill(a):
                a = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
                return a.replace("http://ORIGIN", f"http://{origin_ip}:8080")
            c["args"] = [fill(a) for a in c.get("args", [])]
            left = [a for a in c["args"] if "$(" in a]
            if left:
                sys.exit(f"{kind}/{name}: unfilled variables in {left}")
            named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                get = c.get(probe, {}).get("httpGet")
                if get and isinstance(get.get("port"), str):
                    get["port"] = named[get["port"]]
            listing.append((pod_name, f"{pod_name}-{c['name']}", ip, named))
            c.pop("ports", None)
        for v in pod_spec.get("volumes", []):
            if v.get("secret", {}).get("secretName") == "cdn-tls":
                del v["secret"]
                v["hostPath"] = {"path": tls_dir, "type": "Directory"}
        # Kubernetes restarts these pods' containers; here an exit is to be seen, not hidden.
        pod_spec["restartPolicy"] = "Never"
        meta = {"name": pod_name, "labels": dict(tmpl["metadata"].get("labels", {}))}
        meta["labels"]["cdn-smoke"] = "1"
        out.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec})
        ips.append(ip)
    notes.append(f"{kind}/{name}: {len(out)} Pod(s) {', '.join(p['metadata']['name'] for p in out)}")
    return out

pods.append({"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "origin", "labels": {"cdn-smoke": "1"}},
             "spec": {"restartPolicy": "Never",
                      "containers": [{"name": "origin", "image": image,
                                      "command": ["origin-stub", "--listen", "0.0.0.0:8080"]}]}})
ips.append(origin_ip)
next_ip = 20
for doc in docs:
    if doc["kind"] in ("StatefulSet", "Deployment"):
        pods += workload_pods(doc, next_ip)
        next_ip += 10
# Services: a headless one's DNS name lists its pods' addresses; podman has no cluster DNS,
# so the name goes into every pod's /etc/hosts with one line per address.
aliases = []
for doc in docs:
    if doc["kind"] != "Service":
        continue
    name, spec = doc["metadata"]["name"], doc["spec"]
    sel = spec.get("selector", {})
    members = [p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in sel.items())]
    member_ips = [ips[pods.index(p)] for p in members]
    if spec.get("clusterIP") == "None":
        fqdn = f"{name}.{ns}.svc.cluster.local"
        aliases += [{"ip": ip, "hostnames": [fqdn]} for ip in member_ips]
        notes.append(f"Service/{name} (headless): {fqdn} -> {' '.join(member_ips)} in /etc/hosts")
    else:
        notes.append(f"Service/{name} ({spec.get('type', 'ClusterIP')}): not run (no virtual IP "
                     f"in podman); the smoke asks its pods directly: {' '.join(member_ips)}")
for p in pods:
    p["spec"]["hostAliases"] = aliases
for doc in docs:
    if doc["kind"] not in ("StatefulSet", "Deployment", "Service"):
        notes.append(f"{doc['kind']}/{doc['metadata']['name']}: not rendered")
yaml.safe_dump_all(pods, sys.stdout, sort_keys=False)
for n in notes:
    print(n, file=sys.stderr)
print("ips " + " ".join(ips), file=sys.stderr)
for name, ctr, ip, ports in listing:
    print("pod", name, ctr, ip, ports.get("http", "-"), ports["admin"], file=sys.stderr)
PY
grep -vE '^(ips|pod) ' "$work/render.txt" | sed 's/^/  /'
read -ra pod_ips <<<"$(awk '$1 == "ips" {$1 = ""; print}' "$work/render.txt")"
ip_args=()
for ip in "${pod_ips[@]}"; do ip_args+=(--ip "$ip"); done
pm kube play --network "$net" "${ip_args[@]}" "$work/pods.yaml" >/dev/null || fail "podman kube play failed"

wait_http() {   # URL: polls it for up to 30 s until it answers 2xx
    local _
    for _ in $(seq 300); do
        curl -sf -m 2 -o /dev/null "$1" && return 0
        sleep 0.1
    done
    return 1
}
# Readiness as the probes define it: /healthz on every member's admin port.
awk '$1 == "pod" {print $2, $3, $4, $5, $6}' "$work/render.txt" >"$work/members.txt"
origin_ip="$subnet_prefix.10"
wait_http "http://$origin_ip:8080/ready?size=1" ||
    fail "the origin pod did not answer: $(podman logs origin-origin 2>&1 | tail -n 5)"
while read -r name ctr ip _ admin; do
    wait_http "http://$ip:$admin/healthz" ||
        fail "pod $name: http://$ip:$admin/healthz did not answer within 30 s: $(podman logs "$ctr" 2>&1 | tail -n 5)"
done <"$work/members.txt"
say "ok: the origin pod and /healthz of every member pod answer: $(awk '{print $1, $3}' "$work/members.txt" | paste -sd, - | sed 's/,/, /g')"
nodes="$(awk '$1 ~ /node/' "$work/members.txt" | wc -l)"
edges="$(awk '$1 ~ /edge/ {print $1, $3, $4, $5}' "$work/members.txt")"
read -r edge0 edge0_ip edge_port edge0_admin <<<"$(printf '%s\n' "$edges" | sed -n 1p)"
alive=""
n=""
for _ in $(seq 300); do   # 30 s
    n="$(curl -sf -m 2 "http://$edge0_ip:$edge0_admin/status" | "$py" -c '
import json, sys
print(sum(1 for m in json.load(sys.stdin)["members"] if m["state"] == "alive" and m["link"] == "up"))' 2>/dev/null || true)"
    if [ "$n" = "$nodes" ]; then alive=1; break; fi
    sleep 0.1
done
[ -n "$alive" ] || fail "$edge0 did not list $nodes cache nodes alive within 30 s (last count: ${n:-none})"
say "ok: $edge0 lists $nodes cache nodes alive and linked (seeded through the headless Service's name)"
kpath="/k8s?size=256&ct=text/plain"
expect_xcache "http://$edge0_ip:$edge_port$kpath" '^MISS, MISS from cdn-node-[0-9]+$' \
    "through the edge pod; a node pod fetched from the origin pod"
expect_xcache "http://$edge0_ip:$edge_port$kpath" '^HIT$' "edge pod hit"
if [ "$(printf '%s\n' "$edges" | wc -l)" -ge 2 ]; then
    read -r _ edge1_ip _ _ <<<"$(printf '%s\n' "$edges" | sed -n 2p)"
    expect_xcache "http://$edge1_ip:$edge_port$kpath" '^MISS, HIT from cdn-node-[0-9]+$' \
        "the other edge pod; the node pod had it"
fi
# Stopping as the kubelet does: SIGTERM, with the pods' terminationGracePeriodSeconds to exit.
stop_grace="$("$py" -c '
import sys, yaml
print(max(d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
          for d in yaml.safe_load_all(open(sys.argv[1])) if d and "template" in d.get("spec", {})))' \
    "$root/deploy/kubernetes/cdn.yaml")"
pids=()
while read -r name ctr _; do
    pids+=("$(pm inspect "$ctr" --format '{{.State.Pid}}')")
done <"$work/members.txt"
stop_ms="$(sigterm_and_wait "$stop_grace" "${pids[@]}")" ||
    fail "a member pod did not exit within ${stop_grace} s of SIGTERM"
while read -r name ctr _; do
    rc="$(timeout 300 podman wait "$ctr" 2>>"$log")" || fail "podman wait $ctr failed"
    [ "$rc" = 0 ] || fail "pod $name: exit code $rc after SIGTERM: $(podman logs "$ctr" 2>&1 | tail -n 5)"
done <"$work/members.txt"
say "ok: SIGTERM to every member pod at once: all exited with code 0, the last after $stop_ms ms (grace: ${stop_grace} s)"
pm kube down "$work/pods.yaml" >/dev/null || fail "podman kube down failed"
left="$(pm ps -a -q | wc -l) containers, $(pm pod ps -q | wc -l) pods"
[ "$left" = "0 containers, 0 pods" ] || fail "$left left after podman kube down"
pm network rm "$net" >/dev/null
say "ok: podman kube down: no pod or container left; network removed"

say "== passed in $((SECONDS - start_all)) s"
