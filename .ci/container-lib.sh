# Shared by the container CI steps: an isolated podman store, a cached Debian base, the image build.
# Source it; it defines functions and exports CONTAINERS_CONF / CONTAINERS_STORAGE_CONF.
# Measured pitfalls of this machine (cgroup hybrid, rlimits, offline base) are handled here.

CI_CTR_WORK=${CI_CTR_WORK:-/var/tmp/quaymirror-ci-ctr}
CI_CTR_CACHE=${CI_CTR_CACHE:-/var/cache/quaymirror-ci}
BASE_TAG=localhost/quaymirror-base:bookworm
APP_TAG=${APP_TAG:-localhost/quaymirror:ci}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

ctr_setup() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  mkdir -p "$CI_CTR_WORK" "$CI_CTR_CACHE"
  # crun cannot run on this cgroup-hybrid host; rlimits must stay under the sandbox's hard limits.
  cat > "$CI_CTR_WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' \
    "$CI_CTR_WORK" "$CI_CTR_WORK" > "$CI_CTR_WORK/storage.conf"
  export CONTAINERS_CONF="$CI_CTR_WORK/containers.conf" CONTAINERS_STORAGE_CONF="$CI_CTR_WORK/storage.conf"
}

# The Debian mirror this machine's apt already uses for SUITE: the first URI of an enabled `deb` source
# whose suites include SUITE, in apt's order (sources.list, then sources.list.d/ by name; deb822
# `.sources` stanzas and one-line `.list` entries alike). CI_DEBIAN_MIRROR overrides it; APT_ETC
# (default /etc/apt) is where the sources are read. Printed on stdout; fails when there is none.
ctr_debian_mirror() {
  local suite=$1 etc=${APT_ETC:-/etc/apt} files=() mirror
  if [ -n "${CI_DEBIAN_MIRROR:-}" ]; then echo "$CI_DEBIAN_MIRROR"; return 0; fi
  [ -f "$etc/sources.list" ] && files+=("$etc/sources.list")
  local file
  for file in "$etc"/sources.list.d/*; do
    case $file in *.list|*.sources) [ -f "$file" ] && files+=("$file") ;; esac
  done
  mirror=$(
    for file in "${files[@]}"; do
      case $file in
        *.sources)  # deb822: stanzas separated by blank lines, continuation lines start with a blank
          awk -v suite="$suite" '
            function flush() {
              gsub(/[ \t]+/, " ", types); gsub(/[ \t]+/, " ", suites)
              if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && tolower(enabled) != "no" && uris != "") {
                split(uris, u, " "); print u[1]
              }
              types = suites = uris = enabled = ""; field = ""
            }
            /^#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0; next }
            {
              name = tolower($0); sub(/:.*/, "", name); value = $0; sub(/^[^:]*:[ \t]*/, "", value); field = name
              if (name == "types") types = value; else if (name == "uris") uris = value
              else if (name == "suites") suites = value; else if (name == "enabled") enabled = value
            }
            END { flush() }' "$file" ;;
        *)  # one-line: deb [options] URI SUITE COMPONENTS...
          awk -v suite="$suite" '
            $1 == "deb" {
              sub(/^deb[ \t]+/, ""); if ($0 ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "")
              if ($2 == suite) print $1
            }' "$file" ;;
      esac
    done | head -n1
  )
  if [ -z "$mirror" ]; then
    echo "ci: no Debian mirror for $suite in $etc/sources.list{,.d}; set CI_DEBIAN_MIRROR" >&2
    return 1
  fi
  echo "${mirror%/}"
}

# The cached base tarball for SUITE. Its name carries a hash of the mirror, since the base's apt
# sources name the mirror it was made from (the image build and the README check use them).
ctr_base_tarball() {
  local mirror
  mirror=$(ctr_debian_mirror bookworm) || return 1
  echo "$CI_CTR_CACHE/rootfs-bookworm-$(printf '%s' "$mirror" | sha256sum | cut -c1-12).tar"
}

# A Debian bookworm base with python3 + venv, made once with debootstrap from this machine's Debian
# mirror and cached as a tarball.
ctr_base() {
  local tarball mirror
  tarball=$(ctr_base_tarball) || return 1
  mirror=$(ctr_debian_mirror bookworm) || return 1
  if [ ! -s "$tarball" ]; then
    local rootfs="$CI_CTR_WORK/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
      "$mirror" >"$CI_CTR_WORK/debootstrap.log" 2>&1 \
      || { tail -20 "$CI_CTR_WORK/debootstrap.log"; return 1; }
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{doc,man,locale}/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  podman image exists "$BASE_TAG" || podman import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_TAG" >/dev/null 2>&1
}

# Build the repository's own Dockerfile. Wheels are built on the host (the base has no pip
# configuration for this machine's package index) and installed offline inside the build.
ctr_build() {
  rm -rf "$REPO_ROOT/wheels"
  "$REPO_ROOT/.venv/bin/pip" wheel -q "$REPO_ROOT" -w "$REPO_ROOT/wheels" >/dev/null
  podman build --pull=never --network host --isolation chroot --build-arg BASE="$BASE_TAG" \
    -t "$APP_TAG" -f "$REPO_ROOT/Dockerfile" "$REPO_ROOT"
  local rc=$?
  rm -rf "$REPO_ROOT/wheels"
  return $rc
}

ctr_cleanup_images() {
  podman rmi -f "$APP_TAG" >/dev/null 2>&1 || true
  podman rmi -f "$BASE_TAG" >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
}

# Common run flags: tini in the image handles signals; host network reaches the host's loopback
# registries and PostgreSQL.
CTR_RUN_FLAGS=(--network host)
