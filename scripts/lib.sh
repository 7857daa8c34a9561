# Shared by the project's scripts: source it, don't run it.

# A loopback port that was free a moment ago.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The last LINES lines of each log file that exists, under a header each.
#   print_logs LINES FILE...
print_logs() {
  local lines=$1 f
  shift
  for f in "$@"; do
    [ -f "$f" ] && { echo "==> $f <=="; tail -n "$lines" "$f"; }
  done
  return 0
}
