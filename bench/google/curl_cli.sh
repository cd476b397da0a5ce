#!/bin/sh
# Benchmark contender: what a shell user would write -- one curl process (and
# so one TCP connect and one TLS handshake) per token, calling
# dataportability authorization.reset with an empty body.
#
#   bench/google/curl_cli.sh --endpoint https://localhost:18443 --ca /path/ca.pem --count 500
#
# Prints one JSON line on stdout:
#   {"client":"curl-cli","calls":N,"ok":K,"seconds":S,"setup_seconds":0,...}
# "seconds" is the wall time of the loop (date +%s.%N before and after); there
# is no library to load, so setup_seconds is 0. curl picks HTTP/2 by ALPN when
# the server offers it, as it would for a user.
#
# A non-2xx answer is counted as not ok and the loop goes on; the exit status
# is then 1. A transport error (server down, TLS verification failure, ...)
# stops the run at once with curl's message on stderr and exit status 2.
set -u

prog=curl_cli.sh
usage() {
    echo "$prog: $1" >&2
    echo "usage: $prog --endpoint https://HOST:PORT --ca CA.pem --count N [--concurrency 1]" >&2
    exit 2
}

endpoint='' ca='' count='' concurrency=1
while [ $# -gt 0 ]; do
    case $1 in
        --endpoint|--ca|--count|--concurrency)
            [ $# -ge 2 ] || usage "$1 needs a value"
            case $1 in
                --endpoint) endpoint=$2 ;;
                --ca) ca=$2 ;;
                --count) count=$2 ;;
                --concurrency) concurrency=$2 ;;
            esac
            shift 2 ;;
        -h|--help) usage help ;;
        *) usage "unknown argument $1" ;;
    esac
done

[ -n "$endpoint" ] || usage "--endpoint is required"
case $endpoint in https://*|http://*) ;; *) usage "--endpoint must be an http(s) URL" ;; esac
[ -n "$ca" ] || usage "--ca is required"
[ -r "$ca" ] || usage "CA file not readable: $ca"
case $count in ''|*[!0-9]*) usage "--count must be a positive integer" ;; esac
[ "$count" -ge 1 ] || usage "--count must be a positive integer"
[ "$concurrency" = 1 ] || usage "this contender is a sequential loop: --concurrency must be 1"
command -v curl >/dev/null 2>&1 || { echo "$prog: curl not found" >&2; exit 3; }

url=${endpoint%/}/v1/authorization:reset
ok=0
bad=0
codes=

start=$(date +%s.%N)
i=1
while [ "$i" -le "$count" ]; do
    tok=bench-token-$i
    if code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$ca" -X POST \
            -H "Authorization: Bearer $tok" "$url"); then
        case $code in
            2??) ok=$((ok + 1)) ;;
            *) bad=$((bad + 1)); case " $codes " in *" $code "*) ;; *) codes="$codes $code" ;; esac ;;
        esac
    else
        rc=$?
        echo "$prog: call $i of $count failed: curl exit $rc (http code ${code:-none})" >&2
        exit 2
    fi
    i=$((i + 1))
done
end=$(date +%s.%N)

seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.6f", b - a }')
printf '{"client":"curl-cli","calls":%d,"ok":%d,"seconds":%s,"setup_seconds":0,"concurrency":1}\n' \
    "$count" "$ok" "$seconds"
if [ "$ok" -ne "$count" ]; then
    echo "$prog: $bad of $count calls were not 2xx (codes:$codes)" >&2
    exit 1
fi
exit 0
