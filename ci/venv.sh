# Sourced by ci/runtime_venv.sh and ci/clients_venv.sh: one cached venv per name and pyproject.toml.
# Needs CACHE, KEY, REPO, BASE_PY and a log function from the caller.

cached_venv() {  # cached_venv NAME PIP-ARGS...: the venv's python on stdout, cached at $CACHE/NAME-$KEY;
  # returns 3 when pip cannot reach the package registry (nothing left behind), 1 when the install fails
  local name=$1 dir stamp t0 pip_log
  shift
  dir=$CACHE/$name-$KEY
  stamp="$dir/.ready"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$REPO" ]; then echo "$dir/bin/python"; return 0; fi
  t0=$(date +%s)
  if [ -f "$stamp" ]; then  # made from another checkout: point the editable install here
    "$dir/bin/pip" install -q --no-deps -e "$REPO" >&2
  else
    rm -rf "$dir" "$CACHE/$name"-*  # this key's partial build and the venvs of older pyproject.toml files
    mkdir -p "$CACHE"
    "$BASE_PY" -m venv "$dir" >&2
    pip_log=$(mktemp)
    if ! "$dir/bin/pip" install -q --retries 1 --timeout 30 "$@" >"$pip_log" 2>&1; then
      if ! "$dir/bin/pip" index versions pip --retries 1 --timeout 30 >/dev/null 2>&1; then  # the registry, not us
        tail -3 "$pip_log" >&2; rm -rf "$dir" "$pip_log"
        return 3
      fi
      cat "$pip_log" >&2; rm -f "$pip_log"; log "pip install for venv $name failed"; return 1
    fi
    rm -f "$pip_log"
  fi
  echo "$REPO" >"$stamp"
  log "venv $name ready in $(( $(date +%s) - t0 )) s"
  echo "$dir/bin/python"
}
