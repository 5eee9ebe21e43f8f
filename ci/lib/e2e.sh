# Sourced by ci/e2e and ci/e2e-director: timed steps, and looking at a local cluster
# (ci/cluster) from the outside and inside its VMs. The cluster functions need CLUSTER (the
# cluster file) and fail().
# shellcheck shell=bash

T0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
section() { printf '\n==== %s ==== (%ss)\n' "$*" "$(elapsed "$T0")"; }
declare -a TIMES=()
timed() { # timed LABEL CMD...: runs CMD, records its wall time under LABEL
	local label=$1 start rc=0
	shift
	start=$(date +%s.%N)
	"$@" || rc=$?
	TIMES+=("$(printf '%-44s %7ss' "$label" "$(elapsed "$start")")")
	return "$rc"
}

# docker on node NAME, through its socket.
node_docker() {
	local sock
	sock=$(jq -r --arg n "$1" '.nodes[] | select(.name == $n) | .docker_socket' "$CLUSTER")
	shift
	DOCKER_HOST=$sock docker "$@"
}
nodes() { jq -r '.nodes[].name' "$CLUSTER"; }
etcd_keys() {
	ETCDCTL_API=3 etcdctl --endpoints "$(jq -r '.etcd.endpoints | join(",")' "$CLUSTER")" \
		--cacert "$(jq -r .etcd.ca_cert_file "$CLUSTER")" \
		--cert "$(jq -r .etcd.client_cert_file "$CLUSTER")" \
		--key "$(jq -r .etcd.client_key_file "$CLUSTER")" \
		get --prefix --keys-only "$1"
}

# in_vm_on NODE VM SCRIPT: SCRIPT run by bash inside the VM.
in_vm_on() { node_docker "$1" exec "$2" bash -c "$3"; }

# check_store_on NODE VM DISK: inside the VM, /var/vcap/store is a mount of the disk's
# device (mountinfo's source), not a folder of the container, and that device is a loop
# device over the disk's image.
check_store_on() {
	local node=$1 vm=$2 disk=$3
	in_vm_on "$node" "$vm" "awk '\$5 == \"/var/vcap/store\" { for (i = 7; i < NF; i++) if (\$i == \"-\") print \$(i + 2) }' /proc/self/mountinfo" |
		grep -qx "/warden-cpi-dev/$disk" ||
		fail "/var/vcap/store in $vm is not a mount of disk $disk: $(in_vm_on "$node" "$vm" 'grep store /proc/self/mountinfo' || true)"
	in_vm_on "$node" "$vm" "test -b /warden-cpi-dev/$disk && cat /sys/dev/block/\$(stat -c '%t:%T' /warden-cpi-dev/$disk | awk -F: '{printf \"%d:%d\", \"0x\" \$1, \"0x\" \$2}')/loop/backing_file" |
		grep -q "/$disk/_data/moltencore-disk.img" ||
		fail "/warden-cpi-dev/$disk in $vm is no loop device over the disk's image"
}

# check_job_on NODE VM JOB: monit in the VM runs JOB (a fresh process shows as
# "initializing" for a moment); prints the summary.
check_job_on() {
	local summary
	for _ in $(seq 1 30); do
		summary=$(in_vm_on "$1" "$2" '/var/vcap/bosh/bin/monit summary' 2>&1 || true)
		grep -qE "Process '$3' +running" <<<"$summary" && break
		sleep 1
	done
	echo "$summary"
	grep -qE "Process '$3' +running" <<<"$summary" || fail "$3 does not run under monit in $2"
}

# leftovers KEY_PREFIX [DISK...]: prints what MoltenCore left on the nodes and in etcd (VM
# containers, disk and VM volumes, stemcell images, the nodes' disk trees, etcd records,
# loop devices over the named disks' images), one line each.
leftovers() {
	local prefix=$1 n c v i d tree kind k l
	shift
	for n in $(nodes); do
		while read -r c; do [[ -n $c ]] && echo "container $c on $n"; done < <(
			node_docker "$n" ps -a --filter label=moltencore.vm.cid --format '{{.Names}}')
		while read -r v; do [[ -n $v ]] && echo "volume $v on $n"; done < <(
			node_docker "$n" volume ls -q | grep -E '^(disk-|snap-|vm-)' || true)
		while read -r i; do [[ -n $i ]] && echo "image $i on $n"; done < <(
			node_docker "$n" images --format '{{.Repository}}:{{.Tag}}' moltencore-stemcell)
		tree=$(jq -r --arg n "$n" '.nodes[] | select(.name == $n) | .prep_root' "$CLUSTER")/var/lib/moltencore/vm-disks
		# VM folders, and the tree's records of disks (its own .bound folder and its lock
		# file may stay).
		while read -r d; do [[ -n $d && $d != .bound && $d != .lock ]] && echo "disk tree $d on $n"; done < <(ls -A "$tree" 2>/dev/null)
		while read -r d; do [[ -n $d ]] && echo "disk tree record .bound/$d on $n"; done < <(ls -A "$tree/.bound" 2>/dev/null)
	done
	for kind in vms disks stemcells snapshots; do
		while read -r k; do [[ -n $k ]] && echo "etcd $k"; done < <(etcd_keys "$prefix/$kind/")
	done
	for d in "$@"; do
		while read -r l; do [[ -n $l ]] && echo "loop device $l"; done < <(
			losetup -n -l -O NAME,BACK-FILE | awk -v d="/$d/_data/" 'index($2, d) {print $1}')
	done
	return 0
}

# release_tree DEST: a copy of this repository's release (config/ without private.yml,
# jobs/, packages/, the prebuilt binary in src/moltencore_cpi/) at DEST, for `bosh
# create-release --dir DEST`: the CLI writes its dev-build index and dev_releases/ there,
# and the operator's own tree stays as their own `bosh create-release` expects it.
release_tree() {
	mkdir -p "$1/src"
	cp -r "$REPO/config" "$REPO/jobs" "$REPO/packages" "$1/"
	rm -f "$1/config/private.yml"
	cp -r "$REPO/src/moltencore_cpi" "$1/src/"
}
