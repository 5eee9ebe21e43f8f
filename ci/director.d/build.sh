# Sourced by ci/director: the director's root, built once per set of inputs and kept in
# the cache as a folder that every run mounts read-only under its own writable layer.
# shellcheck shell=bash

# shellcheck source=ci/lib/debian-mirror.sh
source "$REPO/ci/lib/debian-mirror.sh"

# Prints the path of the built root; builds it when the cache has none for these inputs.
build_root() {
	local src davcli cache mirror key root work t0
	src=${MC_BOSH_SRC:-$REPO/../shared/tools/bosh-src-3604d808.tar.gz}
	davcli=${MC_DAVCLI:-$REPO/../shared/tools/davcli}
	cache=${MC_DIRECTOR_CACHE:-/var/cache/moltencore/director}
	[[ -f $src ]] || die "the director's source not found: $src (set MC_BOSH_SRC)"
	[[ -f $davcli && -x $davcli ]] || die "davcli not found or not executable: $davcli (set MC_DAVCLI)"
	[[ $cache == /* ]] || die "MC_DIRECTOR_CACHE must be an absolute path"
	local tool
	for tool in debootstrap chroot jq openssl curl unshare flock; do
		command -v "$tool" >/dev/null || die "$tool not found (ci/install-deps installs it)"
	done
	mirror=$(debian_mirror | head -n1)
	[[ $mirror =~ ^(https?|file):// && $mirror != *[[:space:]\'\"]* ]] || die "no usable Debian archive in the apt sources"
	mirror=${mirror%/}
	key=$(printf '%s\n' "build $(sha "$FILES/build.sh")" "src $(sha "$src")" "davcli $(sha "$davcli")" \
		"suite $SUITE" "arch $ARCH" "mirror $mirror" "packages ${PACKAGES[*]}" \
		"debootstrap $(debootstrap --version)" | sha256sum | cut -d' ' -f1)
	root=$cache/root-${key:0:16}
	mkdir -p "$cache"
	exec 8>"$cache/lock"
	flock 8
	if [[ -f $root/.complete ]]; then
		touch "$root"
		log "root from the cache (${root##*/})"
		echo "$root"
		return
	fi
	t0=$(date +%s.%N)
	log "building the director's root (key ${key:0:16}, $SUITE from $mirror); a few minutes"
	work=$(mktemp -d "$cache/.build.XXXXXX")
	# shellcheck disable=SC2064 # the paths are fixed now
	trap "unmount_build '$work/root'; rm -rf --one-file-system '$work'" EXIT
	debootstrap --variant=minbase --arch="$ARCH" --components=main "$SUITE" "$work/root" "$mirror" \
		>"$work/debootstrap.log" 2>&1 || {
		tail -n 30 "$work/debootstrap.log" >&2
		die "debootstrap $SUITE failed"
	}
	log "debootstrap done ($(elapsed "$t0") s); packages"
	build_packages "$work/root"
	log "packages done ($(elapsed "$t0") s); the director's gems"
	build_director "$work/root" "$src" "$davcli"
	unmount_build "$work/root"
	rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/var/cache/apt/*.bin \
		"$work/root"/var/cache/apt/archives/*.deb
	touch "$work/root/.complete"
	mv "$work/root" "$root"
	rm -rf --one-file-system "$work"
	trap - EXIT
	# Older roots beyond the newest few go.
	ls -dt "$cache"/root-* | tail -n +$((KEEP_ROOTS + 1)) | xargs -r rm -rf --one-file-system
	log "root built in $(elapsed "$t0") s (${root##*/}, $(du -sm "$root" | cut -f1) MiB)"
	echo "$root"
}

in_build() { chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "${@:2}"; }

unmount_build() {
	local m
	for m in proc dev/pts dev; do
		! mountpoint -q "$1/$m" 2>/dev/null || umount -l "$1/$m"
	done
}

# The packages, installed with apt in the root; no service starts while they install.
build_packages() {
	local root=$1
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 0755 "$root/usr/sbin/policy-rc.d"
	cp /etc/resolv.conf "$root/etc/resolv.conf"
	mount -t proc proc "$root/proc"
	in_build "$root" apt-get update -qq >"$root/../apt.log" 2>&1 &&
		DEBIAN_FRONTEND=noninteractive in_build "$root" apt-get install -y -qq --no-install-recommends \
			"${PACKAGES[@]}" >>"$root/../apt.log" 2>&1 || {
		tail -n 30 "$root/../apt.log" >&2
		die "installing the director's packages failed"
	}
	rm -f "$root/usr/sbin/policy-rc.d"
}

# The director as the release's packaging builds it (packages/director/packaging): the
# source's own gems built, then `bundle install --local` of bosh-director and pg from
# src/vendor/cache, offline. Two C extensions of 2023 need gcc 14 to accept their pointer
# casts. Then davcli. (The API launcher, the start script and the digest helper are put
# into each run's writable layer: ci/director.d/configure.sh.)
build_director() {
	local root=$1 src=$2 davcli=$3 d=$1/var/vcap/packages/director
	mkdir -p "$d/src"
	tar -C "$d/src" --strip-components=2 -xzf "$src" --wildcards '*/src/*'
	cat >"$d/Gemfile" <<'EOF'
# The director's gems (the release's packages/director/packaging, without mysql2)
gem 'json', '2.6.3'
gem 'bosh-director'
gem 'pg'
EOF
	ln -s src/vendor "$d/vendor"
	in_build "$root" bash -euo pipefail -c '
		cd /var/vcap/packages/director/src
		for spec in */*.gemspec vendor/cache/eventmachine-*/eventmachine.gemspec vendor/cache/netaddr-rb-*/netaddr.gemspec; do
			(cd "$(dirname "$spec")" && gem build "$(basename "$spec")" >/dev/null && mv ./*.gem /var/vcap/packages/director/src/vendor/cache/)
		done
		cd /var/vcap/packages/director
		bundle config set --local path /var/vcap/packages/director/gem_home
		bundle config set --local build.nio4r "--with-cflags=-fpermissive -Wno-error=incompatible-pointer-types"
		bundle install --local --no-prune
	' >"$root/../bundle.log" 2>&1 || {
		tail -n 40 "$root/../bundle.log" >&2
		die "building the director's gems failed"
	}
	mkdir -p "$d/release"
	tar -C "$d/release" --strip-components=1 -xzf "$src" --wildcards '*/jobs/director/*' '*/jobs/blobstore/*'
	install -D -m 0755 "$davcli" "$root/var/vcap/packages/davcli/bin/davcli"
	in_build "$root" bash -c 'cd /var/vcap/packages/director && bundle exec ruby -e "require %q(bosh/director); require %q(bosh/template/test)"' \
		>"$root/../check.log" 2>&1 || {
		tail -n 20 "$root/../check.log" >&2
		die "the director's gems do not load"
	}
}
