# Sourced by the load-test scripts.

# wait_port PORT SECONDS: returns once something listens on 127.0.0.1:PORT; exits the script
# if nothing does within SECONDS.
wait_port() {
  local deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "server on port $1 did not start within $2 s" >&2
      exit 1
    fi
    sleep 0.1
  done
}
