#!/usr/bin/env bash
# Local services for sweeps and Ray jobs on one machine: an MLflow server (SQLite + artifact
# store under RUN_DIR) and a Ray head with the dashboard's job API, both on 127.0.0.1.
#
#   bash ops/local_services.sh start  [RUN_DIR]   # RUN_DIR defaults to runs/services
#   bash ops/local_services.sh status [RUN_DIR]
#   bash ops/local_services.sh stop   [RUN_DIR]
#   eval "$(bash ops/local_services.sh env)"      # the exports below, for this shell
#
# Then, from the repository root:
#   ray job submit --working-dir . -- python -m workflows.pipeline \
#       --config workflows/configs/tiny_cpu.yaml
#
# Knobs (environment): SSFT_SERVICES ("mlflow ray", or just one), MLFLOW_PORT (5000),
# RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_NUM_CPUS (all cores), MLFLOW_WAIT_S (60),
# MLFLOW_WORKERS (unset = the server's default; each worker process takes ~250 MB).
#
# Why it looks like this:
# - Many processes writing one SQLite file hit "database is locked": sweeps and Ray jobs log
#   through this one server instead (MLFLOW_TRACKING_URI).
# - The MLflow 3 server starts job-consumer processes that outlive a plain kill of its PID:
#   job execution is switched off, the server runs in its own process group (setsid), and
#   `stop` kills the whole group. It takes ~15 s to answer /health: `start` polls for it.
# - Ray >= 2.59 uses token authentication. `ray start` turns it on when a token exists, so
#   `start` makes sure one does (`ray get-auth-token --generate` writes ~/.ray/auth_token, or
#   uses RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH if set). Clients (ray job submit, the job SDK)
#   send it only with RAY_AUTH_MODE=token, from RAY_AUTH_TOKEN or that file.
# - `stop` runs `ray stop`, which stops EVERY Ray of this user on the machine (embedded ones
#   too); it is only run when this script started the head (RUN_DIR/ray.started).
set -euo pipefail

CMD="${1:-}"
RUN_DIR="${2:-runs/services}"
SERVICES="${SSFT_SERVICES:-mlflow ray}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
RAY_PORT="${RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_NUM_CPUS="${RAY_NUM_CPUS:-$(nproc)}"
MLFLOW_WAIT_S="${MLFLOW_WAIT_S:-60}"
MLFLOW_URL="http://127.0.0.1:${MLFLOW_PORT}"

usage() {
    echo "usage: bash ops/local_services.sh start|stop|status|env [RUN_DIR]" >&2
    exit 2
}

wants() { [[ " $SERVICES " == *" $1 "* ]]; }

mlflow_healthy() { curl -sf --max-time 2 "$MLFLOW_URL/health" >/dev/null 2>&1; }

# Members of process group $1 (one PID a line; empty when none is left).
group_members() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'; }

# True when process group $1 still has a process whose command line mentions mlflow: a stale
# pgid file must never make us kill a group that a later, unrelated process now leads.
mlflow_group_alive() {
    local pid
    for pid in $(group_members "$1"); do
        ps -o args= -p "$pid" 2>/dev/null | grep -q mlflow && return 0
    done
    return 1
}

mlflow_start() {
    if mlflow_healthy; then
        echo "[services] MLflow already answers at $MLFLOW_URL"
        return 0
    fi
    mkdir -p "$RUN_DIR/mlartifacts"
    # setsid: a new session and process group led by the server itself (no job control in a
    # script, so setsid does not fork and $! is the server's PID and PGID).
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true \
        setsid mlflow server \
        --backend-store-uri "sqlite:///$RUN_DIR/mlflow.db" \
        --artifacts-destination "$RUN_DIR/mlartifacts" \
        --host 127.0.0.1 --port "$MLFLOW_PORT" ${MLFLOW_WORKERS:+--workers "$MLFLOW_WORKERS"} \
        >"$RUN_DIR/mlflow.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$RUN_DIR/mlflow.pid"
    local pgid
    pgid="$(ps -o pgid= -p "$pid" | tr -d ' ')"
    echo "${pgid:-$pid}" >"$RUN_DIR/mlflow.pgid"
    echo -n "[services] MLflow (pid $pid) starting at $MLFLOW_URL, waiting for /health"
    local waited=0
    until mlflow_healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo " - it exited; last lines of $RUN_DIR/mlflow.log:" >&2
            tail -n 20 "$RUN_DIR/mlflow.log" >&2
            return 1
        fi
        if ((waited >= MLFLOW_WAIT_S)); then
            echo " - no answer after ${MLFLOW_WAIT_S}s; see $RUN_DIR/mlflow.log" >&2
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
        echo -n "."
    done
    echo " up after ${waited}s"
}

mlflow_stop() {
    local file="$RUN_DIR/mlflow.pgid"
    if [[ ! -f "$file" ]]; then
        echo "[services] no MLflow started from $RUN_DIR"
        return 0
    fi
    local pgid
    pgid="$(<"$file")"
    if mlflow_group_alive "$pgid"; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do
            [[ -z "$(group_members "$pgid")" ]] && break
            sleep 0.2
        done
        if [[ -n "$(group_members "$pgid")" ]]; then
            kill -KILL -- "-$pgid" 2>/dev/null || true
        fi
        echo "[services] MLflow process group $pgid stopped"
    else
        echo "[services] MLflow (group $pgid) was not running"
    fi
    rm -f "$RUN_DIR/mlflow.pid" "$file"
}

ray_start() {
    # Make sure a token exists (prints it on stdout: discarded), so the head enables auth.
    ray get-auth-token --generate >/dev/null
    if ! RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" ray start --head \
        --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 \
        --port "$RAY_PORT" --dashboard-port "$RAY_DASHBOARD_PORT" \
        --num-cpus "$RAY_NUM_CPUS" --include-dashboard=true --disable-usage-stats \
        >"$RUN_DIR/ray.log" 2>&1; then
        echo "[services] ray start failed; last lines of $RUN_DIR/ray.log:" >&2
        tail -n 20 "$RUN_DIR/ray.log" >&2
        return 1
    fi
    touch "$RUN_DIR/ray.started"
    echo "[services] Ray head at 127.0.0.1:$RAY_PORT, jobs at http://127.0.0.1:$RAY_DASHBOARD_PORT"
}

ray_stop() {
    if [[ ! -f "$RUN_DIR/ray.started" ]]; then
        echo "[services] no Ray head started from $RUN_DIR (not running ray stop)"
        return 0
    fi
    ray stop >>"$RUN_DIR/ray.log" 2>&1 || true
    rm -f "$RUN_DIR/ray.started"
    echo "[services] Ray stopped"
}

print_env() {
    if wants mlflow; then
        echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"
    fi
    if wants ray; then
        echo "export RAY_ADDRESS=http://127.0.0.1:$RAY_DASHBOARD_PORT"
        echo "export RAY_AUTH_MODE=token"
        echo 'export RAY_AUTH_TOKEN="$(ray get-auth-token)"'
    fi
}

status() {
    if wants mlflow; then
        if mlflow_healthy; then echo "mlflow: up at $MLFLOW_URL"; else echo "mlflow: down"; fi
    fi
    if wants ray; then
        local code
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
            "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version" || true)"
        case "$code" in
            200) echo "ray: dashboard up at http://127.0.0.1:$RAY_DASHBOARD_PORT (no auth)" ;;
            401 | 403) echo "ray: dashboard up at http://127.0.0.1:$RAY_DASHBOARD_PORT (token auth)" ;;
            *) echo "ray: down" ;;
        esac
    fi
}

case "$CMD" in
    start | stop | status) ;;
    env)
        print_env
        exit 0
        ;;
    *) usage ;;
esac
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"

case "$CMD" in
    start)
        if wants mlflow; then mlflow_start; fi
        if wants ray; then ray_start; fi
        echo
        echo "# For ray job submit / the clients in this shell (or: eval \"\$(bash $0 env)\"):"
        print_env
        if wants ray; then
            echo "# The token lives in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH): ray get-auth-token"
            echo "# RAY_ADDRESS=http://... is for ray job commands; before running"
            echo "# python -m workflows.* directly in this shell, unset it (embedded Ray) or set"
            echo "# RAY_ADDRESS=127.0.0.1:$RAY_PORT to attach to this head."
        fi
        ;;
    stop)
        if wants ray; then ray_stop; fi
        if wants mlflow; then mlflow_stop; fi
        ;;
    status) status ;;
esac
