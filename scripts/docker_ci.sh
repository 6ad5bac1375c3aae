#!/usr/bin/env bash
# The Docker part of CI: install and start a Docker engine, build a local base image
# (debootstrap + docker import: no Docker Hub here), build the CPU image, run a tiny study
# inside it with the lab directory on a mounted volume, check from the host that the report
# and the MLflow runs are there, and require `rtlab reproduce` inside the container to say
# "identical". Prints the time of each phase. Stops the engine it started, whatever happens.
#
# Usage: scripts/docker_ci.sh            (as root, from anywhere in the repository)
# Env:   RTLAB_DOCKER_CACHE   cache folder kept between runs (default /var/cache/rtlab-docker):
#                             base rootfs tarball and wheelhouse
#        RTLAB_IMAGE          image tag to build (default rtlab:ci)
#        RTLAB_CLUSTER_CHECK  1: also run the compose shape on loopback (host PostgreSQL, the
#                             cluster image's MLflow server, a launcher and a worker
#                             container) and reproduce its report; default 1 (Docker Hub is
#                             out of reach here, so this is how CI checks the compose shape)
#        RTLAB_HOST_CHECK     1: also reproduce the container's report on the host with
#                             .venv/bin/rtlab, to show host == container bit for bit;
#                             default auto: when .venv/bin/rtlab exists; 0: skip
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
cache_dir="${RTLAB_DOCKER_CACHE:-/var/cache/rtlab-docker}"
image="${RTLAB_IMAGE:-rtlab:ci}"
base_image="rtlab-base:bookworm"
study_file="tests/reproduce/tiny_study.yaml"
study_name="tiny_repro"
run_dir="$(mktemp -d /tmp/rtlab-docker-ci.XXXXXX)"
# Logs of the engine and the build outlive the run, for a look after a failure.
log_dir="$cache_dir/logs"
mkdir -p "$log_dir"
# Debian's client: the machine's own /usr/local/bin/docker is a newer CLI without buildx,
# whose `docker build` refuses BuildKit; the Debian client matches the Debian engine.
docker_cmd=/usr/bin/docker
export DOCKER_BUILDKIT=1

declare -a timings=()
phase_start=$SECONDS
phase() {  # phase NAME: close the previous phase's timer, open NAME's
  local now=$SECONDS
  if [[ -n "${current_phase:-}" ]]; then
    timings+=("$(printf '%-28s %5d s' "$current_phase" $((now - phase_start)))")
  fi
  current_phase="$1"
  phase_start=$now
  [[ -n "$1" ]] && echo "=== docker-ci: $1"
  return 0
}
total_start=$SECONDS

started_engine=""
pg_data=""
cleanup() {
  local status=$?
  phase ""
  if [[ -n "$pg_data" ]]; then
    $docker_cmd rm -f rtlab-ci-mlflow >/dev/null 2>&1 || true
    su postgres -s /bin/sh -c "pg_ctl -D '$pg_data' -m fast stop" >/dev/null 2>&1 || true
  fi
  if [[ -n "$started_engine" ]]; then
    # Superseded images of earlier runs; the build cache stays for the next run.
    $docker_cmd image prune -f >/dev/null 2>&1 || true
    echo "=== docker-ci: stopping the engine (pid $started_engine)"
    kill "$started_engine" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$started_engine" 2>/dev/null || break; sleep 1; done
    kill -9 "$started_engine" 2>/dev/null || true
  fi
  rm -rf "$run_dir"
  echo "=== docker-ci timings"
  for line in "${timings[@]}"; do echo "  $line"; done
  printf '  %-28s %5d s\n' "total" $((SECONDS - total_start))
  [[ $status -eq 0 ]] && echo "docker-ci: PASSED" || echo "docker-ci: FAILED (exit $status)"
  exit $status
}
trap cleanup EXIT

fail() { echo "docker-ci: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- engine
phase "install engine"
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null \
  || ! command -v docker-compose >/dev/null || ! [[ -x $docker_cmd ]]; then
  apt-get update -qq
  # Debian's engine and client (20.10), and compose v1 for `compose config`: bookworm has no
  # compose v2 plugin.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap docker-compose \
    >"$log_dir/apt.log" 2>&1 || { tail -20 "$log_dir/apt.log" >&2; fail "apt-get install"; }
fi

phase "start engine"
if ! $docker_cmd info >/dev/null 2>&1; then
  # No bridge network and no iptables rules: containers use --network none (the study) or
  # host (the build's pip, only when no wheelhouse); nothing gets a private-range address.
  dockerd --bridge=none --iptables=false --ip6tables=false \
    >"$log_dir/dockerd.log" 2>&1 &
  started_engine=$!
  for _ in $(seq 1 60); do
    $docker_cmd info >/dev/null 2>&1 && break
    kill -0 "$started_engine" 2>/dev/null || { cat "$log_dir/dockerd.log" >&2; fail "dockerd died"; }
    sleep 1
  done
  $docker_cmd info >/dev/null 2>&1 || { tail -20 "$log_dir/dockerd.log" >&2; fail "dockerd not ready"; }
fi
$docker_cmd version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'

# ---------------------------------------------------------------- images
phase "base image"
RTLAB_DOCKER_CACHE="$cache_dir" DOCKER=$docker_cmd scripts/make_base_image.sh "$base_image"

phase "wheelhouse"
# A dependency added to pyproject.toml but not to the lock would be missing from the image.
if [[ -x .venv/bin/python ]]; then .venv/bin/python docker/make_lock.py --check; fi
# The lock's wheels, fetched on the host with the host's pip configuration (its index, its CA,
# the local CPU torch wheel), kept in the cache; the image then installs with --no-index.
python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || fail "the wheelhouse needs the host's python3 to be 3.11 (the image's Python)"
mkdir -p "$cache_dir/wheels"
rm -rf docker/context/wheels docker/context/ca.pem
# Exactly the pinned files into the build context, from the cache alone when it has them all
# (no network); otherwise fetch the missing ones into the cache first.
copy_pinned() {
  python3 -m pip download -q --no-deps --only-binary=:all: --no-index \
    --find-links "$cache_dir/wheels" -d docker/context/wheels -r docker/requirements.lock \
    -r docker/requirements-cluster.lock
}
if ! copy_pinned 2>/dev/null; then
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$cache_dir/wheels" \
    -r docker/requirements.lock -r docker/requirements-cluster.lock 2> >(grep -v "is ignored: it is neither a file nor" >&2)
  copy_pinned
fi
echo "$(ls docker/context/wheels | wc -l) wheels, $(du -sh docker/context/wheels | cut -f1)"

phase "build image"
$docker_cmd build --network host -f docker/Dockerfile \
  --build-arg BASE_IMAGE="$base_image" --build-arg WHEELHOUSE_ONLY=1 \
  --build-arg GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -t "$image" . >"$log_dir/build.log" 2>&1 || { tail -40 "$log_dir/build.log" >&2; fail "build"; }
grep -E '^#[0-9]+ (CACHED|DONE [0-9.]+s)' "$log_dir/build.log" | tail -3 || true
$docker_cmd image ls "$image" --format 'image {{.Repository}}:{{.Tag}} {{.Size}}'

phase "image checks"
$docker_cmd run --rm --network none "$image" --help >"$run_dir/help.txt" \
  || fail "rtlab --help failed in the image"
grep -q reproduce "$run_dir/help.txt" || fail "rtlab --help does not list reproduce"
user_id="$($docker_cmd run --rm --network none --entrypoint id "$image" -u)"
[[ "$user_id" != 0 ]] || fail "the image runs as root"
echo "runs as uid $user_id"
# Nothing of the build context's extras, tests, caches or run state may be in the image.
leftovers="$($docker_cmd run --rm --network none --entrypoint sh "$image" -c '
  ls -d /ctx /src /root/.cache /home/rtlab/.cache 2>/dev/null
  find / -xdev \( -name "mlflow.db" -o -name ".rtlab" -o -name "mlartifacts" -o -name "*.whl" \
    -o -name ".git" -o -name "test_*.py" -path "/opt/rtlab/lib/*/rtlab/*" \) \
    -not -path "/usr/share/python-wheels/*" -print 2>/dev/null
  find /work /data -mindepth 1')"
[[ "$leftovers" == "/work/reports" ]] || { echo "$leftovers" >&2; fail "unexpected files in image"; }
$docker_cmd history --no-trunc --format '{{.CreatedBy}}' "$image" >"$run_dir/history.txt"
if grep -Eiq 'ca\.pem|wheels|secret|password' "$run_dir/history.txt"; then
  fail "image history mentions build-only files or secrets"
fi
echo "image holds no build extras, caches, tests or run state"

phase "compose + cluster image"
# docker/compose.yaml must be valid; of its images only rtlab's can be built here.
if $docker_cmd compose version >/dev/null 2>&1; then compose=($docker_cmd compose); else
  command -v docker-compose >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    docker-compose >/dev/null
  compose=(docker-compose)
fi
RTLAB_DB_PASSWORD=ci-only-placeholder "${compose[@]}" -p rtlab -f docker/compose.yaml config -q \
  || fail "docker/compose.yaml: compose config failed"
$docker_cmd build --network host -f docker/Dockerfile --target cluster \
  --build-arg BASE_IMAGE="$base_image" --build-arg WHEELHOUSE_ONLY=1 -t rtlab:cluster . \
  >"$log_dir/build-cluster.log" 2>&1 \
  || { tail -20 "$log_dir/build-cluster.log" >&2; fail "cluster image build"; }
$docker_cmd run --rm --network none --entrypoint python rtlab:cluster -c \
  "import psycopg, mlflow.server; print('cluster image: psycopg', psycopg.__version__)"

# ---------------------------------------------------------------- tiny study in the container
phase "run study (container)"
lab="$run_dir/lab"
mkdir -p "$lab/reports" "$run_dir/data"
cp "$study_file" "$lab/$(basename "$study_file")"
chown -R "$user_id" "$lab" "$run_dir/data"
in_container() {
  $docker_cmd run --rm --network none -v "$lab:/work" -v "$run_dir/data:/data" "$image" "$@"
}
in_container run --quiet "$(basename "$study_file")"

phase "report (container)"
in_container report "$(basename "$study_file")"

phase "host checks"
manifest="$lab/reports/$study_name/manifest.json"
[[ -s "$manifest" && -s "$lab/reports/$study_name/report.md" ]] || fail "no report on the host"
[[ -s "$lab/mlflow.db" ]] || fail "no MLflow store on the host"
python3 - "$lab/mlflow.db" "$manifest" <<'EOF'
import json, sqlite3, sys
store, manifest = sys.argv[1], json.load(open(sys.argv[2]))
rows = sqlite3.connect(store).execute(
    "select r.status, count(*) from runs r join tags t on t.run_uuid = r.run_uuid"
    " where t.key = 'rtlab.role' and t.value = 'child' group by r.status").fetchall()
finished = dict(rows).get("FINISHED", 0)
print(f"MLflow store on the host: child runs by status {dict(rows)}; manifest runs "
      f"{len(manifest['runs'])}")
assert finished == len(manifest["runs"]) == 4, "expected 4 finished child runs"
EOF

phase "reproduce (container)"
in_container reproduce "reports/$study_name" --json "reports/reproduce.json" | tee "$run_dir/reproduce.txt"
grep -q '^verdict: identical' "$run_dir/reproduce.txt" || fail "reproduce did not say identical"

host_check="${RTLAB_HOST_CHECK:-auto}"
[[ "$host_check" == auto ]] && { [[ -x .venv/bin/rtlab ]] && host_check=1 || host_check=0; }
if [[ "$host_check" == 1 ]]; then
  phase "reproduce (host)"
  (cd "$lab" && "$repo/.venv/bin/rtlab" reproduce "reports/$study_name") | tee "$run_dir/host.txt"
  grep -q '^verdict: identical' "$run_dir/host.txt" \
    || fail "host rerun of the container's report is not identical"
fi

if [[ "${RTLAB_CLUSTER_CHECK:-1}" == 1 ]]; then
  phase "cluster (loopback)"
  # docker/compose.yaml's shape with what this machine has: Debian's PostgreSQL instead of the
  # postgres image (Docker Hub is out of reach), every service on 127.0.0.1 (host network).
  pg_port=55432 mlflow_port=55000 pg_password="ci-$RANDOM$RANDOM"
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin | tail -1)"
  pg_data="$run_dir/pg"
  mkdir -p "$pg_data" && chown postgres "$pg_data" "$run_dir"
  su postgres -s /bin/sh -c "'$pg_bin/initdb' -D '$pg_data' -U postgres -A trust" >/dev/null
  su postgres -s /bin/sh -c "'$pg_bin/pg_ctl' -D '$pg_data' -l '$pg_data/log' -w start \
    -o '-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_data'" >/dev/null
  psql_cmd=(su postgres -s /bin/sh -c)
  "${psql_cmd[@]}" "psql -q -h 127.0.0.1 -p $pg_port -U postgres -c \"CREATE ROLE rtlab LOGIN \
    PASSWORD '$pg_password'\" -c 'CREATE DATABASE mlflow OWNER rtlab' -f -" \
    <docker/postgres-init/10-optuna.sql
  db="postgresql+psycopg://rtlab:$pg_password@127.0.0.1:$pg_port"
  $docker_cmd run -d --name rtlab-ci-mlflow --network host --entrypoint mlflow rtlab:cluster \
    server --backend-store-uri "$db/mlflow" --serve-artifacts --artifacts-destination /mlartifacts \
    --host 127.0.0.1 --port "$mlflow_port" >/dev/null
  for _ in $(seq 1 60); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$mlflow_port/health')" \
      2>/dev/null && break
    sleep 1
  done
  cluster_lab="$run_dir/cluster"
  worker_host="$run_dir/worker-host"  # the worker shares no folder with the launcher
  mkdir -p "$cluster_lab" "$worker_host"
  cp "$study_file" "$cluster_lab/"
  chown -R "$user_id" "$cluster_lab" "$worker_host"
  # On the host network every container has the host's name but its own process ids: each
  # gets its own RTLAB_HOST, or a worker would judge the other's runs by pids it cannot see.
  in_cluster() {
    $docker_cmd run --rm --network host -e MLFLOW_TRACKING_URI="http://127.0.0.1:$mlflow_port" \
      -e RTLAB_HOST="rtlab-ci-${host:-launcher}" -v "${work:-$cluster_lab}:/work" rtlab:cluster "$@"
  }
  # The launcher fills the queue and works; a second container joins it as a worker.
  in_cluster run --quiet "$(basename "$study_file")" --storage "$db/optuna" &
  launcher=$!
  # Join as soon as the launcher has queued the study (runs take seconds each).
  for _ in $(seq 1 120); do
    "${psql_cmd[@]}" "psql -tA -h 127.0.0.1 -p $pg_port -U postgres -d optuna -c \
      \"select count(*) from trials\"" 2>/dev/null | grep -q '^[1-9]' && break
    sleep 0.5
  done
  host=worker work="$worker_host" in_cluster worker --study "$study_name" --storage "$db/optuna" --threads 1 \
    >"$run_dir/worker.log" 2>&1 || true
  wait "$launcher" || fail "cluster launcher failed"
  echo "worker container ran: $(grep -c "finished" "$run_dir/worker.log" || true) run(s)"
  in_cluster report "$(basename "$study_file")" --out reports
  # The report of runs logged through the server, reproduced into a fresh local store.
  $docker_cmd run --rm --network none -v "$cluster_lab:/work" "$image" \
    reproduce "reports/$study_name" | tee "$run_dir/cluster-reproduce.txt" | tail -3
  grep -q '^verdict: identical' "$run_dir/cluster-reproduce.txt" \
    || fail "cluster runs do not reproduce identically"
fi
rm -rf docker/context/wheels
