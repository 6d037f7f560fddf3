#!/usr/bin/env bash
# Build docker/Dockerfile and smoke-test the compose services without Docker Hub or a Docker
# daemon: a Debian 12 base image is made here (debootstrap + podman import), the image is built
# on it with podman, and the compose services are run as compose would run them.
#
#   sudo docker/local-build.sh          # from the repository root; needs apt (Debian 12)
#
# Checks: gateway-init succeeds twice (the second keeps the PKI), ToneGuard's container sees
# only ca.pem, client.pem and client.key, both HEALTHCHECKs pass, and the node stops cleanly
# on SIGTERM. Uses host networking: ports 2223/udp, 8080 and 8443 on 127.0.0.1 must be free.
#
# Two settings only this kind of machine needs, kept out of the Dockerfile: containers.conf
# drops podman's default ulimits (an unprivileged container cannot raise them), and the base
# image gets the host's CA bundle (a site whose PyPI traffic passes a TLS-inspecting proxy).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${TONEGUARD_IMAGE_WORK:-/tmp/toneguard-image}
BASE=localhost/toneguard-base:bookworm
IMAGE=localhost/toneguard:0.1.0
PREFIX=tglocal
PYTHON=${PYTHON:-.venv/bin/python}  # reads docker/compose.yaml (PyYAML)

for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || {
        apt-get update -q && apt-get install -y -q --no-install-recommends podman debootstrap
        break
    }
done
mkdir -p "$WORK"
cat > "$WORK/storage.conf" <<'EOF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []
EOF
export CONTAINERS_STORAGE_CONF="$WORK/storage.conf" CONTAINERS_CONF="$WORK/containers.conf"

if ! podman image exists "$BASE"; then
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates bookworm \
        "$WORK/rootfs" http://deb.debian.org/debian
    ln -sf python3 "$WORK/rootfs/usr/bin/python"
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    # Debian marks its Python as externally managed; the image is the environment here.
    tar -C "$WORK/rootfs" -c . | podman import --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
        --change 'CMD ["python3"]' - "$BASE"
    rm -rf "$WORK/rootfs"
fi

# --format docker keeps the HEALTHCHECK (the OCI image format has no such field).
podman build --format docker --isolation chroot --network host -f docker/Dockerfile \
    --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" .

cleanup() {
    podman rm -f "$PREFIX-gateway" "$PREFIX-toneguard" >/dev/null 2>&1 || true
    podman volume rm -f "${PREFIX}_gateway-data" "${PREFIX}_gateway-client" \
        "${PREFIX}_toneguard-state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

# `podman run` arguments for one compose service (podman-compose 1.0.3 cannot combine
# network_mode: host with the default network it always adds).
run_args() {
    "$PYTHON" - "$1" "$PREFIX" <<'EOF'
import sys, yaml
name, prefix = sys.argv[1], sys.argv[2]
s = yaml.safe_load(open("docker/compose.yaml"))["services"][name]
args = ["--name", f"{prefix}-{name}", "--network", s.get("network_mode", "bridge")]
if s.get("healthcheck", {}).get("disable"):
    args.append("--no-healthcheck")
for volume in s.get("volumes", []):
    args += ["-v", f"{prefix}_{volume}"]
entry = s.get("entrypoint", [])
if entry:
    args += ["--entrypoint", entry[0]]
args.append("localhost/" + s["image"])
args += entry[1:]
args += ["127.0.0.1" if c.startswith("${TONEGUARD_MEDIA_ADDRESS") else c for c in s["command"]]
print("\0".join(args), end="")
EOF
}
service() {  # service NAME [podman run options...]
    local name=$1; shift
    local args
    mapfile -d '' args < <(run_args "$name")
    podman run "$@" "${args[@]}"
}

echo "local-build: gateway-init, twice"
service gateway-init --rm
service gateway-init --rm | grep -q "already" || { echo "second init did not keep the PKI"; exit 1; }

service gateway -d >/dev/null
podman run --rm -v "${PREFIX}_toneguard-state:/var/lib/toneguard" "$IMAGE" \
    agents add smoke --file /var/lib/toneguard/agents.json >/dev/null
service toneguard -d >/dev/null

echo "local-build: health checks"
for name in gateway toneguard; do
    for _ in $(seq 30); do
        podman healthcheck run "$PREFIX-$name" >/dev/null 2>&1 && break
        sleep 1
    done
    podman healthcheck run "$PREFIX-$name" || { podman logs "$PREFIX-$name"; exit 1; }
done

seen=$(podman exec "$PREFIX-toneguard" ls /etc/toneguard/gateway-client | sort | tr '\n' ' ')
[ "$seen" = "ca.pem client.key client.pem " ] || { echo "ToneGuard sees: $seen"; exit 1; }
if podman exec "$PREFIX-toneguard" sh -c 'ls /var/lib/toneguard-gateway | grep -q .'; then
    echo "ToneGuard can see the gateway's data"; exit 1
fi

podman stop -t 20 "$PREFIX-toneguard" >/dev/null
code=$(podman inspect "$PREFIX-toneguard" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || { echo "toneguard exited $code on SIGTERM"; exit 1; }
echo "local-build: $IMAGE built and smoke-tested"
