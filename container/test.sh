#!/usr/bin/env bash
# make container-test: lint the Dockerfile, validate the compose file, build the serving image,
# bring the compose stack up, run the served-parity tests against it, check that the server is
# not root and its filesystem read-only, check that a broken model volume leaves the others
# served, and tear everything down, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v podman >/dev/null || {
  echo "podman is missing: apt-get install podman runc debootstrap (Debian packages)" >&2; exit 1; }

export CONTAINERS_CONF="$PWD/container/containers.conf"  # runc, no default ulimits
BIN=.venv/bin
PROJECT=onnx-serving-test
IMAGE=onnx-serving:test
compose() { "$BIN/podman-compose" -p "$PROJECT" -f docker-compose.yml "$@"; }
free_port() { "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
broken_models=$(mktemp -d)
cleanup() {
  compose down -v -t 5 >/dev/null 2>&1 || true
  podman rm -f "$PROJECT-broken" >/dev/null 2>&1 || true
  rm -rf "$broken_models"
}
trap cleanup EXIT

wait_ready() {  # url seconds started -> prints the seconds since started, to a tenth
  local started=$3 deadline=$(( SECONDS + $2 ))
  until curl -fs -o /dev/null "$1/v2/health/ready"; do
    (( SECONDS < deadline )) || { echo "not ready after $2 s: $1" >&2; return 1; }
    sleep 0.1
  done
  awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}'
}

echo "== hadolint"
"$BIN/hadolint" Dockerfile

echo "== compose file"
compose config >/dev/null

echo "== base image"
# The default base comes from an image registry; where none can be reached, build a Debian one.
BASE_IMAGE=${BASE_IMAGE:-}
if [ -z "$BASE_IMAGE" ]; then
  if podman pull -q python:3.11-slim >/dev/null 2>&1; then BASE_IMAGE=python:3.11-slim
  else BASE_IMAGE=$(container/base-image.sh); fi
fi
export BASE_IMAGE
echo "$BASE_IMAGE"

echo "== build"
secret=()
[ -s /etc/ssl/certs/ca-certificates.crt ] && secret=(--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt)
started=$SECONDS
podman build -q --network host --format docker "${secret[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --target serve -t "$IMAGE" -t onnx-serving:latest . >/dev/null
build_seconds=$(( SECONDS - started ))
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
echo "built in ${build_seconds} s, image size $(( size / 1000000 )) MB"

echo "== compose up"
API_PORT=$(free_port)
GRPC_PORT=$(free_port)
export API_PORT GRPC_PORT
started=$EPOCHREALTIME
compose up -d --no-build >/dev/null 2>&1
url="http://127.0.0.1:$API_PORT"
ready_seconds=$(wait_ready "$url" 60 "$started")
echo "ready ${ready_seconds} s after compose up, at $url"
container=$(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' | head -1)
podman healthcheck run "$container" 2>/dev/null && echo "HEALTHCHECK passes"

echo "== served parity, and slow and idle clients, against the container"
SERVING_TEST_URL="$url" "$BIN/python" -m pytest -q -p no:cacheprovider tests/test_parity_served.py \
  tests/test_slow_clients.py

echo "== gRPC against the container: tritonclient.grpc, health"
SERVING_TEST_GRPC="127.0.0.1:$GRPC_PORT" "$BIN/python" -m pytest -q -p no:cacheprovider \
  tests/test_grpc.py -k given_address

echo "== not root, read-only"
users=$(podman top "$container" user args | awk '/gunicorn|nginx/ {print $1}' | sort -u)
echo "gunicorn and nginx run as: $users"
[ -n "$users" ] && ! grep -qx root <<<"$users"
[ "$(podman inspect "$container" --format '{{.HostConfig.ReadonlyRootfs}}')" = true ]
if podman exec "$container" touch /app/probe 2>/dev/null; then echo "root filesystem is writable" >&2; exit 1; fi
echo "root filesystem refuses writes"

echo "== a broken model in the volume"
cp -r models/. "$broken_models/"
head -c 100 models/digits/1/model.onnx > "$broken_models/digits/1/model.onnx"
chmod -R a+rX "$broken_models"
port=$(free_port)
podman run -d --name "$PROJECT-broken" --read-only --tmpfs /tmp -p "127.0.0.1:$port:8000" \
  -v "$broken_models:/models:ro" "$IMAGE" >/dev/null 2>&1
broken="http://127.0.0.1:$port"
until curl -fs -o /dev/null "$broken/v2/health/live"; do sleep 0.5; done
status=$(curl -s -o /dev/null -w '%{http_code}' "$broken/v2/health/ready")
digits=$(curl -s -o /dev/null -w '%{http_code}' "$broken/v2/models/digits/ready")
demand=$(curl -s -o /dev/null -w '%{http_code}' "$broken/v2/models/demand/ready")
echo "ready: $status, digits ready: $digits, demand ready: $demand"
[ "$status" = 503 ] && [ "$digits" = 503 ] && [ "$demand" = 200 ]
curl -fsS "$broken/v1/models/digits" | grep -q sha256

echo "== graceful stop"
podman stop -t 30 "$container" >/dev/null
podman logs "$container" 2>&1 | grep -q "Shutting down: Master"
[ "$(podman inspect "$container" --format '{{.State.ExitCode}}')" = 0 ]
echo "SIGTERM reached nginx, gunicorn and the gRPC processes through tini; all stopped gracefully"

echo "container-test passed: image $(( size / 1000000 )) MB, build ${build_seconds} s, ready ${ready_seconds} s"
