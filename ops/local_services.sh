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
# RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_CLIENT_PORT (10001), RAY_AGENT_PORT (52365),
# RAY_TEMP_DIR (Ray's default, /tmp/ray), RAY_NUM_CPUS (all cores), MLFLOW_WAIT_S and
# RAY_WAIT_S (60), MLFLOW_WORKERS (unset = the server's default; ~250 MB per worker process).
#
# Why it looks like this:
# - Many processes writing one SQLite file hit "database is locked": sweeps and Ray jobs log
#   through this one server instead (MLFLOW_TRACKING_URI).
# - The MLflow 3 server starts job-consumer processes that outlive a plain kill of its PID:
#   job execution is switched off, the server runs in its own process group (setsid), and
#   `stop` kills the whole group. It takes ~15 s to answer /health: `start` polls for it.
# - Ray >= 2.59 uses token authentication. `ray start` turns it on when a token exists, so
#   `start` makes sure one does (`ray get-auth-token --generate` writes ~/.ray/auth_token; with
#   RAY_AUTH_TOKEN_PATH set to a missing file, a new token is written there; RAY_AUTH_TOKEN is
#   used as is). Clients (ray job submit, the job SDK) send it only with RAY_AUTH_MODE=token,
#   from RAY_AUTH_TOKEN or that file.
# - `ray stop` stops EVERY Ray of this user on the machine (embedded ones too), so it is never
#   used: the head runs as `ray start --block` in its own process group, and `stop` sends
#   SIGTERM to that one process (it drains the node and stops the head's processes), then
#   kills what is left of the group and of the session's workers.
set -euo pipefail

CMD="${1:-}"
RUN_DIR="${2:-runs/services}"
SERVICES="${SSFT_SERVICES:-mlflow ray}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
RAY_PORT="${RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_NUM_CPUS="${RAY_NUM_CPUS:-$(nproc)}"
MLFLOW_WAIT_S="${MLFLOW_WAIT_S:-60}"
RAY_CLIENT_PORT="${RAY_CLIENT_PORT:-10001}"
RAY_AGENT_PORT="${RAY_AGENT_PORT:-52365}"
RAY_WAIT_S="${RAY_WAIT_S:-60}"
MLFLOW_URL="http://127.0.0.1:${MLFLOW_PORT}"

usage() {
    echo "usage: bash ops/local_services.sh start|stop|status|env [RUN_DIR]" >&2
    exit 2
}

wants() { [[ " $SERVICES " == *" $1 "* ]]; }

mlflow_healthy() { curl -sf --max-time 2 "$MLFLOW_URL/health" >/dev/null 2>&1; }

# Members of process group $1 (one PID a line; empty when none is left).
group_members() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'; }

# Poll check command $1 once a second until it succeeds: fails (with the log's tail) when
# process $2 exits first, or after $4 seconds; log file $3.
wait_for() {
    local check="$1" pid="$2" log="$3" limit="$4" waited=0
    until "$check"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo " - it exited; last lines of $log:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        if ((waited >= limit)); then
            echo " - no answer after ${limit}s; see $log" >&2
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
        echo -n "."
    done
    echo " up after ${waited}s"
}

# Wait up to $2 seconds for process group $1 to empty (after a SIGTERM), then SIGKILL the rest.
reap_group() {
    local pgid="$1" limit="$2" i
    for i in $(seq 1 "$((limit * 5))"); do
        [[ -z "$(group_members "$pgid")" ]] && return 0
        sleep 0.2
    done
    echo "[services] process group $pgid still running after ${limit}s: killing it" >&2
    kill -KILL -- "-$pgid" 2>/dev/null || true
}

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
    wait_for mlflow_healthy "$pid" "$RUN_DIR/mlflow.log" "$MLFLOW_WAIT_S"
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
        reap_group "$pgid" 10
        echo "[services] MLflow process group $pgid stopped"
    else
        echo "[services] MLflow (group $pgid) was not running"
    fi
    rm -f "$RUN_DIR/mlflow.pid" "$file"
}

# Make sure the head will find a token, so it starts with token authentication on.
ray_token() {
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        return 0
    fi
    if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        # `ray get-auth-token --generate` refuses a RAY_AUTH_TOKEN_PATH that does not exist yet.
        if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
            mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
            (umask 077 && python -c 'import secrets; print(secrets.token_hex(32))' \
                >"$RAY_AUTH_TOKEN_PATH")
            echo "[services] new Ray auth token written to $RAY_AUTH_TOKEN_PATH"
        fi
        return 0
    fi
    ray get-auth-token --generate >/dev/null # ~/.ray/auth_token; prints the token: discarded
}

ray_dashboard_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
        "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version" || true
}

ray_up() { [[ "$(ray_dashboard_code)" =~ ^(200|401|403)$ ]]; }

# PID of the `ray start --block` that this script started (empty when none is alive).
ray_leader() {
    local pid
    [[ -f "$RUN_DIR/ray.pid" ]] || return 0
    pid="$(<"$RUN_DIR/ray.pid")"
    if ps -o args= -p "$pid" 2>/dev/null | grep -q "ray start --head"; then
        echo "$pid"
    fi
}

ray_start() {
    if ray_up; then
        echo "[services] a Ray dashboard already answers at http://127.0.0.1:$RAY_DASHBOARD_PORT"
        return 0
    fi
    ray_token
    # --block keeps `ray start` in the foreground as the parent of the head's processes; setsid
    # makes it the leader of their process group, so `stop` never needs `ray stop` (which
    # would stop every Ray of this user on the machine).
    RAY_AUTH_MODE=token setsid ray start --head --block \
        --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 \
        --port "$RAY_PORT" --dashboard-port "$RAY_DASHBOARD_PORT" \
        --ray-client-server-port "$RAY_CLIENT_PORT" \
        --dashboard-agent-listen-port "$RAY_AGENT_PORT" \
        ${RAY_TEMP_DIR:+--temp-dir "$RAY_TEMP_DIR"} \
        --num-cpus "$RAY_NUM_CPUS" --include-dashboard=true --disable-usage-stats \
        >"$RUN_DIR/ray.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$RUN_DIR/ray.pid"
    echo -n "[services] Ray head (pid $pid) starting, waiting for its dashboard"
    if ! wait_for ray_up "$pid" "$RUN_DIR/ray.log" "$RAY_WAIT_S"; then
        kill -0 "$pid" 2>/dev/null || rm -f "$RUN_DIR/ray.pid" # keep it for `stop` if alive
        return 1
    fi
    echo "[services] Ray head at 127.0.0.1:$RAY_PORT, jobs at http://127.0.0.1:$RAY_DASHBOARD_PORT"
}

# Worker PIDs of the head's session, from its log file names (workers leave the leader's
# process group); only processes that still run as `ray::...` are returned.
ray_session_workers() {
    local session f pid
    session="$(grep -o 'saved to: [^ ]*ray_process_exit.log' "$RUN_DIR/ray.log" 2>/dev/null |
        head -n 1 | sed -e 's/^saved to: //' -e 's/\x1b\[[0-9;]*m//g' -e 's#/logs/ray_process_exit.log##')"
    [[ -n "$session" && -d "$session/logs" ]] || return 0
    for f in "$session"/logs/worker-*.out; do
        [[ -e "$f" ]] || continue
        pid="${f##*-}"
        pid="${pid%.out}"
        if ps -o args= -p "$pid" 2>/dev/null | grep -q '^ray::'; then
            echo "$pid"
        fi
    done
}

ray_stop() {
    local pid
    pid="$(ray_leader)"
    if [[ -z "$pid" ]]; then
        echo "[services] no Ray head started from $RUN_DIR is running"
        rm -f "$RUN_DIR/ray.pid"
        return 0
    fi
    local workers
    workers="$(ray_session_workers)"
    # SIGTERM to the leader alone: it drains the node and stops its processes in order (~5 s).
    # Signalling the whole group at once kills the GCS first and the drain then waits 30 s.
    kill -TERM "$pid" 2>/dev/null || true
    reap_group "$pid" "$RAY_WAIT_S"
    for pid in $workers; do
        if ps -o args= -p "$pid" 2>/dev/null | grep -q '^ray::'; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$RUN_DIR/ray.pid"
    echo "[services] Ray head stopped"
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
        case "$(ray_dashboard_code)" in
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
