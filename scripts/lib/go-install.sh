# Sourced: builds (or reuses) one Go command from its module, cached by Go version and module
# version, one build at a time per tool (scripts/prebuild.sh may be building it in the background).
# Release binaries can't be downloaded on this project's machines; the Go module proxy can be
# reached.
#
#   go_install_cached NAME PACKAGE VERSION BINDIR [TAGS]
#                                 NAME into BINDIR (built from PACKAGE@VERSION with Go build TAGS)

go_install_cached() {
  local name="$1" package="$2" version="$3" bindir="$4" tags="${5:-}" cache key bin tmp start
  cache="${LEVEE_CACHE:-$HOME/.cache/levee}"
  key="$(go env GOVERSION GOOS GOARCH | tr '\n' '-')${version}${tags:+-$(echo "$tags" | tr ', ' '+')}"
  bin="$cache/$name-$key"
  mkdir -p "$cache"
  exec 9>"$cache/$name.lock"
  flock 9
  if [[ ! -x "$bin" ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "$name: building $version (a cold build takes minutes)" >&2
    start=$SECONDS
    (cd "$tmp" && GOBIN="$tmp/bin" GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go install -trimpath -ldflags="-s -w" \
      -tags "$tags" "$package@$version")
    mv -f "$tmp/bin/$name" "$bin"
    echo "$name: built in $((SECONDS - start))s" >&2
  fi
  mkdir -p "$bindir"
  if ! cmp -s "$bin" "$bindir/$name"; then
    cp "$bin" "$bindir/$name.tmp"
    mv -f "$bindir/$name.tmp" "$bindir/$name"
  fi
  exec 9>&-
}
