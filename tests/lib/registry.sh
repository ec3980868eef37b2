# A local container registry for the shell tests and benchmarks
# (tests/registry/pull_test.sh, bench/pullbench.sh): a CA and a certificate
# for 127.0.0.1 it signs, an htpasswd file, Debian's docker-registry
# (distribution 2.8) serving TLS on a free port of 127.0.0.1, skopeo pushes
# of OCI layouts, and waiting for a server to listen.
#
# The caller defines `fail MESSAGE` (which exits; tests/lib/check.sh has
# one) and calls registry_stop_all from its EXIT trap: every registry
# started here is killed then, whatever happened before.
# Needs openssl, curl, python3, docker-registry; htpasswd (apache2-utils)
# for registry_htpasswd and skopeo for registry_push.

REGISTRY_PIDS=()

# registry_tls DIR LABEL: DIR/ca.crt and ca.key (a CA called LABEL), and
# DIR/reg.crt and reg.key, a certificate for IP 127.0.0.1 that CA signed;
# DIR/certs/ca.crt is the CA again, as skopeo's --src/--dest-cert-dir want.
registry_tls() {
  local d=$1 label=$2
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$label" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null || fail "openssl cannot make a CA in $d"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$d/reg.key" -out "$d/reg.csr" 2>/dev/null ||
    fail "openssl cannot make the registry's key in $d"
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$d/reg.ext"
  openssl x509 -req -in "$d/reg.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/reg.ext" -out "$d/reg.crt" 2>/dev/null || fail "openssl cannot sign the registry's certificate"
  mkdir -p "$d/certs" && cp "$d/ca.crt" "$d/certs/ca.crt"
}

# registry_htpasswd FILE USER PASSWORD: a bcrypt htpasswd file with one user.
registry_htpasswd() {
  htpasswd -Bbc "$1" "$2" "$3" 2>/dev/null || fail "htpasswd cannot write $1"
}

# free_port: a TCP port of 127.0.0.1 that nothing listened on a moment ago.
# Another process may take it before the caller's server binds it:
# registry_start then tries another.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# port_listening PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_port_file VAR NAME PID FILE [LOG]: a server that binds a port of its
# own choosing writes it to FILE once it listens. Waits (10 s at most) for
# FILE and for the port to accept a connection, and sets VAR to the port.
# Fails naming the server NAME (process PID), with the end of LOG, when it
# exits or does not listen.
wait_port_file() {
  local var_=$1 name_=$2 pid_=$3 file_=$4 log_=${5:-} port_=""
  for _ in $(seq 100); do
    if [ -s "$file_" ]; then
      port_=$(cat "$file_")
      if [[ $port_ =~ ^[0-9]+$ ]] && port_listening "$port_"; then
        printf -v "$var_" %s "$port_"
        return 0
      fi
    fi
    kill -0 "$pid_" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$log_" ] && [ -s "$log_" ] && tail -20 "$log_"
  if ! kill -0 "$pid_" 2>/dev/null; then
    fail "$name_ (pid $pid_) exited before it listened${log_:+ (its log: $log_)}"
  elif [ -z "$port_" ]; then
    fail "$name_ (pid $pid_) did not write its port to $file_ within 10 s"
  fi
  fail "$name_ (pid $pid_) does not accept connections on 127.0.0.1:$port_ (from $file_)"
}

# registry_start NAME DIR STORAGE LOGMODE AUTH...: a docker-registry on a
# free port of 127.0.0.1, TLS with DIR/reg.crt and DIR/reg.key (registry_tls),
# its blobs under STORAGE; its configuration is DIR/NAME.yml, its log
# DIR/NAME.log. LOGMODE: "access" logs at level info with a line for each
# request (to count them: registry_sync_log); "quiet" logs errors only.
# AUTH: "none", "htpasswd FILE" or "token REALM SERVICE ISSUER CERT-BUNDLE".
# Returns once the registry answers /v2/ as its AUTH says (401 with auth,
# 200 without), with REGISTRY_PORT and REGISTRY_PID set; fails naming NAME
# when it does not start.
registry_start() {
  local name=$1 dir=$2 storage=$3 logmode=$4 auth=$5
  local conf=$dir/$name.yml log=$dir/$name.log want=401 port code="" pid attempt
  case $auth in
    none) want=200 ;;
    htpasswd) [ $# -eq 6 ] || fail "registry_start $name: htpasswd FILE" ;;
    token) [ $# -eq 9 ] || fail "registry_start $name: token REALM SERVICE ISSUER CERT-BUNDLE" ;;
    *) fail "registry_start $name: unknown auth '$auth'" ;;
  esac
  for attempt in 1 2 3; do
    port=$(free_port) || fail "python3 cannot find a free port"
    {
      echo "version: 0.1"
      echo "log:"
      if [ "$logmode" = access ]; then
        printf '  level: info\n  formatter: text\n'
      else
        printf '  level: error\n  accesslog:\n    disabled: true\n'
      fi
      printf 'storage:\n  filesystem:\n    rootdirectory: %s\n' "$storage"
      printf 'http:\n  addr: 127.0.0.1:%s\n  tls:\n    certificate: %s\n    key: %s\n' "$port" "$dir/reg.crt" "$dir/reg.key"
      case $auth in
        htpasswd) printf 'auth:\n  htpasswd:\n    realm: ocivm-test\n    path: %s\n' "$6" ;;
        token) printf 'auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n' \
                 "$6" "$7" "$8" "$9" ;;
      esac
    } > "$conf"
    docker-registry serve "$conf" > "$log" 2>&1 &
    pid=$!
    REGISTRY_PIDS+=("$pid")
    for _ in $(seq 100); do
      code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$dir/ca.crt" "https://127.0.0.1:$port/v2/" 2>/dev/null)
      if [ "$code" = "$want" ]; then
        REGISTRY_PORT=$port REGISTRY_PID=$pid
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    # Exited: most likely the port was taken meanwhile; try another.
    kill -0 "$pid" 2>/dev/null && break
    wait "$pid" 2>/dev/null
  done
  tail -20 "$log"
  if kill -0 "$pid" 2>/dev/null; then
    fail "docker-registry '$name' (pid $pid) answers /v2/ on 127.0.0.1:$port with '${code:-nothing}', not $want (log: $log)"
  fi
  fail "docker-registry '$name' did not start in $attempt attempts (log: $log)"
}

# registry_sync_log LOG PORT CA: a request of its own to the registry on
# PORT, waited for in its access LOG (registry_start's "access" mode). The
# registry writes a request's log line after it sent the answer, so a count
# read right after a client ended could miss its last requests; afterwards,
# every request answered before this one is in LOG.
REGISTRY_MARKS=0
registry_sync_log() {
  local log=$1 port=$2 ca=$3 mark
  REGISTRY_MARKS=$((REGISTRY_MARKS + 1))
  mark="ocivm-log-mark-$$-$REGISTRY_MARKS"
  curl -s -o /dev/null --cacert "$ca" "https://127.0.0.1:$port/v2/$mark/tags/list" ||
    fail "the registry on 127.0.0.1:$port does not answer"
  for _ in $(seq 100); do
    grep -qF "/v2/$mark/" "$log" && return 0
    sleep 0.1
  done
  fail "the registry on 127.0.0.1:$port did not log a request in 10 s ($log)"
}

# registry_push SOURCE DEST CERT-DIR CREDS [SKOPEO-OPTION...]: skopeo copy
# of the OCI layout SOURCE (DIR:TAG) to DEST (HOST:PORT/REPO:TAG), trusting
# the CA in CERT-DIR, with CREDS (USER:PASS; "" for none).
registry_push() {
  local src=$1 dst=$2 certs=$3 creds=$4 out
  shift 4
  local -a auth=()
  [ -n "$creds" ] && auth=(--dest-creds "$creds")
  out=$(skopeo copy -q "$@" "${auth[@]}" --dest-cert-dir "$certs" "oci:$src" "docker://$dst" 2>&1) ||
    { printf '%s\n' "$out"; fail "skopeo copy oci:$src docker://$dst failed"; }
}

# registry_stop_all: kills every registry registry_start started.
registry_stop_all() {
  local p
  for p in "${REGISTRY_PIDS[@]}"; do
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  REGISTRY_PIDS=()
}
