#!/usr/bin/env bash
# The console-consumer workflow, end to end with a stock Kafka client: `streamscore demo`
# serves on its embedded broker, kcat produces records to `features` and reads `predictions`,
# and the predictions must be the right ones. Also checks that `--log-format json` writes
# nothing but JSON objects to stderr, librdkafka's own log lines (which reach tracing through
# the `log` crate bridge) included.
#
#   tests/kcat_workflow.sh          # needs kcat, jq, curl; builds target/debug/streamscore
#
# Every wait is bounded (KCAT_WORKFLOW_TIMEOUT seconds, default 60) and every demo started
# here is stopped on exit. The last line is `kcat workflow: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."

TIMEOUT="${KCAT_WORKFLOW_TIMEOUT:-60}"
BIN="${CARGO_TARGET_DIR:-target}/debug/streamscore"
# Records the demo sends by itself: 150 iris rows (+5 broken ones, which go to the dead
# letters) for the forest; 11 user events (+3 broken) for the recommender.
DEMO_IRIS_PREDICTIONS=150
DEMO_USER_PREDICTIONS=11
# Data rows (1-based, header excluded) of training/iris.csv that are far from the class
# boundaries, so any sane forest labels them as the CSV does.
IRIS_ROWS=(1 6 16 26 36 46 54 60 63 72 82 91 97 100 103 113 119 129 140 146)
USER_EVENTS=5

log() { printf '%s\n' "$*" >&2; }
fail() {
    log "FAIL: $*"
    exit 1
}

DEMO_PID=""
DEMO_DIR=""

stop_demo() {
    [[ -n "$DEMO_PID" ]] || return 0
    if kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -INT "$DEMO_PID" 2>/dev/null || true
        local deadline=$((SECONDS + TIMEOUT))
        while kill -0 "$DEMO_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$DEMO_PID" 2>/dev/null; then
            log "demo $DEMO_PID ignored SIGINT for ${TIMEOUT}s; killing it"
            kill -KILL "$DEMO_PID" 2>/dev/null || true
        fi
    fi
    local status=0
    wait "$DEMO_PID" 2>/dev/null || status=$?
    DEMO_PID=""
    return "$status"
}

on_exit() {
    local status=$?
    stop_demo || true
    if ((status != 0)) && [[ -n "$DEMO_DIR" ]]; then
        log "--- demo stdout (tail)"
        tail -n 20 "$DEMO_DIR/stdout.log" >&2 || true
        log "--- demo stderr (tail)"
        tail -n 20 "$DEMO_DIR/stderr.log" >&2 || true
    fi
    [[ -z "$DEMO_DIR" ]] || rm -rf "$DEMO_DIR"
}

# Prints the rest of the first stdout line of the demo that starts with $1.
wait_for_stdout_line() {
    local prefix="$1" deadline=$((SECONDS + TIMEOUT)) line
    while ((SECONDS < deadline)); do
        line="$(grep -m1 -F "$prefix" "$DEMO_DIR/stdout.log" || true)"
        if [[ -n "$line" ]]; then
            printf '%s\n' "${line#*"$prefix"}"
            return 0
        fi
        kill -0 "$DEMO_PID" 2>/dev/null || fail "the demo exited before printing '$prefix'"
        sleep 0.2
    done
    fail "no '$prefix' line from the demo within ${TIMEOUT}s"
}

# Starts `streamscore demo --forever` with extra arguments; sets BROKER and SIDE_PORT.
start_demo() {
    DEMO_DIR="$(mktemp -d)"
    # --rate 0: no live sample traffic after the first pass, so the counts below are exact.
    "$BIN" --log-format json demo --forever --rate 0 \
        --http-addr 127.0.0.1:0 --timeout "${TIMEOUT}s" "$@" \
        >"$DEMO_DIR/stdout.log" 2>"$DEMO_DIR/stderr.log" &
    DEMO_PID=$!
    BROKER="$(wait_for_stdout_line 'embedded broker: ')"
    # Port 0 and the printed address, rather than probing for a free port: no race.
    SIDE_PORT="$(wait_for_stdout_line 'side port: http://')"
    SIDE_PORT="${SIDE_PORT%% *}"
    log "demo $DEMO_PID: broker $BROKER, side port $SIDE_PORT"

    local deadline=$((SECONDS + TIMEOUT)) code=""
    while ((SECONDS < deadline)); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$SIDE_PORT/readyz" || true)"
        [[ "$code" == 200 ]] && return 0
        kill -0 "$DEMO_PID" 2>/dev/null || fail "the demo exited before /readyz answered 200"
        sleep 0.3
    done
    fail "/readyz did not answer 200 within ${TIMEOUT}s (last: $code)"
}

# Reads a whole topic as `key<TAB>value` lines into $2, until it holds at least $3 records.
# kcat -e stops at the current end of the topic, so it is re-run until the count is reached.
read_topic_until() {
    local topic="$1" out="$2" want="$3" deadline=$((SECONDS + TIMEOUT)) have=0
    while ((SECONDS < deadline)); do
        timeout 20 kcat -b "$BROKER" -t "$topic" -C -e -o beginning -q -f '%k\t%s\n' >"$out" ||
            log "kcat -C exited with $? (retrying)"
        have="$(wc -l <"$out")"
        ((have >= want)) && return 0
        sleep 0.5
    done
    fail "$topic holds $have records after ${TIMEOUT}s, expected at least $want"
}

# Every stderr line of the demo must be a JSON object with a level and a message.
assert_json_logs() {
    local file="$DEMO_DIR/stderr.log" lines bad
    lines="$(wc -l <"$file")"
    ((lines > 0)) || fail "the demo logged nothing to stderr"
    bad="$(jq -R -r '(try fromjson catch null) as $v
        | select(($v | type) != "object" or ($v.level | type) != "string"
                 or ($v.message | type) != "string")' "$file")"
    [[ -z "$bad" ]] || fail "non-JSON log lines on stderr:"$'\n'"$(head -n 5 <<<"$bad")"
    log "stderr: $lines log lines, all JSON objects"
}

check_iris() {
    start_demo
    local dir="$DEMO_DIR" i=0 row line
    : >"$dir/expected"
    : >"$dir/input"
    for row in "${IRIS_ROWS[@]}"; do
        i=$((i + 1))
        # Line row+1 of the file (header first); the CSV has CRLF line ends.
        line="$(sed -n "$((row + 1))p" training/iris.csv | tr -d '\r')"
        [[ -n "$line" ]] || fail "training/iris.csv has no data row $row"
        IFS=, read -r sl sw pl pw species <<<"$line"
        printf 'kcat-%d|{"id":"kcat-%d","sepal_length":%s,"sepal_width":%s,"petal_length":%s,"petal_width":%s}\n' \
            "$i" "$i" "$sl" "$sw" "$pl" "$pw" >>"$dir/input"
        printf 'kcat-%d %s\n' "$i" "$species" >>"$dir/expected"
    done

    timeout "$TIMEOUT" kcat -b "$BROKER" -t features -P -K '|' <"$dir/input" ||
        fail "kcat -P could not produce to features"
    log "produced ${#IRIS_ROWS[@]} records with kcat"

    read_topic_until predictions "$dir/predictions" $((DEMO_IRIS_PREDICTIONS + ${#IRIS_ROWS[@]}))

    # key, id and label of every prediction for a kcat record, sorted by id.
    cut -f2- "$dir/predictions" |
        jq -r 'select((.id | type) == "string" and (.id | startswith("kcat-")))
               | "\(.id) \(.label)"' | sort >"$dir/got"
    sort "$dir/expected" >"$dir/want"
    if ! diff -u "$dir/want" "$dir/got" >&2; then
        fail "the predictions for the kcat records differ from the CSV's species (above)"
    fi
    # The output record keeps the input key.
    local keyed
    keyed="$(awk -F'\t' '$1 ~ /^kcat-/' "$dir/predictions" |
        jq -R -r 'split("\t") | select(.[0] == (.[1] | fromjson | .id)) | .[0]' | wc -l)"
    ((keyed == ${#IRIS_ROWS[@]})) || fail "$keyed of ${#IRIS_ROWS[@]} predictions carry their input key"

    stop_demo || fail "the iris demo did not exit cleanly on SIGINT"
    assert_json_logs
    log "iris: ${#IRIS_ROWS[@]} kcat records, each predicted once with the CSV's label"
}

check_recommender() {
    start_demo --model models/recommender.json
    local dir="$DEMO_DIR" i
    : >"$dir/input"
    for ((i = 1; i <= USER_EVENTS; i++)); do
        printf 'user-196|{"id":"kcat-u-%d","uid":196}\n' "$i" >>"$dir/input"
    done
    timeout "$TIMEOUT" kcat -b "$BROKER" -t features -P -K '|' <"$dir/input" ||
        fail "kcat -P could not produce to features"
    log "produced $USER_EVENTS user events with kcat"

    read_topic_until predictions "$dir/predictions" $((DEMO_USER_PREDICTIONS + USER_EVENTS))

    cut -f2- "$dir/predictions" |
        jq -c 'select((.id | type) == "string" and (.id | startswith("kcat-u-")))' >"$dir/ours"
    local count good
    count="$(wc -l <"$dir/ours")"
    ((count == USER_EVENTS)) || fail "$count outputs for $USER_EVENTS kcat user events"
    good="$(jq -r 'select(.uid == 196 and (.items | type) == "array" and (.items | length) > 0
                   and (.items | all(has("item") and has("score"))))
                  | .id' "$dir/ours" | sort -u | wc -l)"
    ((good == USER_EVENTS)) || fail "only $good of $USER_EVENTS outputs have uid 196 and an items array: $(cat "$dir/ours")"

    stop_demo || fail "the recommender demo did not exit cleanly on SIGINT"
    assert_json_logs
    log "recommender: $USER_EVENTS kcat user events, each answered with uid 196 and items"
}

# `serve` against a broker address where nothing listens, with a consumer-only property: that
# makes librdkafka itself log (a configuration warning, connection failures), which the
# demos' happy path never does.
check_json_logs() {
    DEMO_DIR="$(mktemp -d)"
    "$BIN" --log-format json serve --brokers 127.0.0.1:1 -X fetch.wait.max.ms=20 \
        --http-addr 127.0.0.1:0 --model models/iris-forest.json \
        >"$DEMO_DIR/stdout.log" 2>"$DEMO_DIR/stderr.log" &
    DEMO_PID=$!
    local deadline=$((SECONDS + TIMEOUT))
    # librdkafka's log callback lines, in either format; the JSON check comes after.
    until grep -qE 'librdkafka: [A-Z_]+ \[thrd:' "$DEMO_DIR/stderr.log"; do
        ((SECONDS < deadline)) || fail "no librdkafka log line within ${TIMEOUT}s"
        kill -0 "$DEMO_PID" 2>/dev/null || fail "serve exited early"
        sleep 0.2
    done
    stop_demo || fail "serve did not exit cleanly on SIGINT"
    assert_json_logs
    log "json logs: librdkafka's lines arrive as JSON too"
}

# Runs one check in its own process: `set -e` is switched off inside a function called as
# an `if` condition, and a fresh process keeps it on.
if [[ "${1:-}" == "--check" ]]; then
    trap on_exit EXIT
    # Turn a signal into a normal exit, so the EXIT trap stops the demo.
    trap 'exit 130' INT TERM
    "check_$2"
    exit 0
fi

for tool in kcat jq curl; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install kcat jq curl)"
done
cargo build --locked --quiet
[[ -x "$BIN" ]] || fail "$BIN was not built"

passed=0
failed=0
for check in iris recommender json_logs; do
    log "== $check"
    if timeout $((TIMEOUT * 5)) "$BASH" "$0" --check "$check"; then
        passed=$((passed + 1))
        log "ok: $check"
    else
        failed=$((failed + 1))
        log "FAILED: $check"
    fi
done
echo "kcat workflow: $passed passed, $failed failed"
((failed == 0))
