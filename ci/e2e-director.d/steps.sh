# Sourced by ci/e2e-director: the test release, the deployment manifest, the steps of a
# deployment's life and the checks made inside the VMs after each.
# shellcheck shell=bash

# The test release: store-writer (under monit) appends a line to its persistent disk at
# every start and keeps a heartbeat there; its drain script appends one before every stop
# the director drives; its package is compiled on a compilation VM and records where.
make_test_release() {
	local tr=$WORK/test-release
	mkdir -p "$tr"/{config,jobs/store-writer/templates,packages/store-tools,src/store-tools}
	printf -- '---\nname: e2e-director\n' >"$tr/config/final.yml"
	echo '--- {}' >"$tr/config/blobs.yml"
	cat >"$tr/jobs/store-writer/spec" <<'EOF'
---
name: store-writer
templates:
  ctl.erb: bin/ctl
  drain: bin/drain
packages:
- store-tools
properties:
  e2e.message:
    description: Written into the persistent disk at every start.
EOF
	cat >"$tr/jobs/store-writer/monit" <<'EOF'
check process store-writer
  with pidfile /var/vcap/sys/run/store-writer/pid
  start program "/var/vcap/jobs/store-writer/bin/ctl start"
  stop program "/var/vcap/jobs/store-writer/bin/ctl stop"
  group vcap
EOF
	cat >"$tr/jobs/store-writer/templates/ctl.erb" <<'EOF'
#!/bin/bash
set -eu
run=/var/vcap/sys/run/store-writer
store=/var/vcap/store/store-writer
pkg=/var/vcap/packages/store-tools
case $1 in
start)
	mkdir -p "$run" /var/vcap/sys/log/store-writer "$store"
	echo "start message=<%= p("e2e.message") %> compiled-on=$(cat "$pkg/compiled-on")" >>"$store/data.log"
	"$pkg/bin/heartbeat" "$store/heartbeat" >>/var/vcap/sys/log/store-writer/heartbeat.log 2>&1 &
	echo $! >"$run/pid"
	;;
stop)
	kill "$(cat "$run/pid")" 2>/dev/null || true
	rm -f "$run/pid"
	;;
esac
EOF
	cat >"$tr/jobs/store-writer/templates/drain" <<'EOF'
#!/bin/bash
# The director runs this before it stops the job: a line on the persistent disk, then 0
# (no wait).
echo "drained $(date +%s)" >>/var/vcap/store/store-writer/drain.log
echo 0
EOF
	cat >"$tr/packages/store-tools/spec" <<'EOF'
---
name: store-tools
files:
- store-tools/heartbeat.sh
EOF
	cat >"$tr/packages/store-tools/packaging" <<'EOF'
set -eu
install -D -m 0755 store-tools/heartbeat.sh "${BOSH_INSTALL_TARGET}/bin/heartbeat"
uname -n >"${BOSH_INSTALL_TARGET}/compiled-on"
EOF
	cat >"$tr/src/store-tools/heartbeat.sh" <<'EOF'
#!/bin/bash
while :; do date +%s >"$1"; sleep 5; done
EOF
	bosh create-release --dir "$tr" --force --tarball "$WORK/e2e-director.tgz" >"$WORK/create-release.log"
}

# The deployment: one instance per node (an AZ each), a persistent disk of DISK_TYPE.
write_manifest() {
	local azs
	azs=$(nodes | jq -R . | jq -sc .)
	cat >"$WORK/manifest.yml" <<EOF
---
name: $DEPLOYMENT
releases:
- name: e2e-director
  version: latest
stemcells:
- alias: default
  os: debian-bookworm
  version: latest
update:
  canaries: 1
  max_in_flight: 3
  canary_watch_time: 1000-120000
  update_watch_time: 1000-120000
instance_groups:
- name: store
  instances: $(nodes | wc -l)
  azs: $azs
  vm_type: default
  stemcell: default
  persistent_disk_type: ((disk_type))
  networks:
  - name: default
  jobs:
  - name: store-writer
    release: e2e-director
    properties:
      e2e:
        message: ((message))
EOF
}

deploy() { bosh -d "$DEPLOYMENT" deploy "$WORK/manifest.yml" -v message="$1" -v disk_type="$2" >"$WORK/deploy-$1-$2.log"; }

# One line per instance: "AZ VM_CID DISK_CID PROCESS_STATE".
instances() {
	bosh -d "$DEPLOYMENT" instances --details --json |
		jq -r '.Tables[0].Rows[] | "\(.az) \(.vm_cid) \(.disk_cids) \(.process_state)"' | sort
}

# check_all EXPECTED_STARTS: inside every VM the job runs, the store is its disk's mount,
# the marker written at the first deploy is there and the job started EXPECTED_STARTS times
# on this disk's data (or more, where noted by the caller with a '+').
check_all() {
	local az vm disk state n=0 starts
	while read -r az vm disk state; do
		n=$((n + 1))
		[[ $state == running ]] || fail "instance in $az is $state"
		[[ $(node_docker "$az" inspect -f '{{.State.Running}}' "$vm") == true ]] || fail "VM $vm is not running on $az"
		check_store_on "$az" "$vm" "$disk"
		check_job_on "$az" "$vm" store-writer >/dev/null
		[[ $(in_vm_on "$az" "$vm" 'cat /var/vcap/store/store-writer/marker') == "first deploy" ]] ||
			fail "the data written at the first deploy is not on $vm's store"
		starts=$(in_vm_on "$az" "$vm" 'grep -c "^start " /var/vcap/store/store-writer/data.log')
		[[ $1 == *+ ]] && ((starts >= ${1%+})) || [[ $starts == "$1" ]] ||
			fail "the job started $starts times on $vm's store, expected $1"
	done < <(instances)
	((n == $(nodes | wc -l))) || fail "$n instances, expected $(nodes | wc -l)"
	echo "$n instances: job running, store on its disk, data there ($1 starts)"
}

column_of() { instances | awk -v c="$1" '{print $c}' | tr '\n' ' '; }
drains() { # the drain lines on each instance's store, summed
	local az vm disk state total=0
	while read -r az vm disk state; do
		total=$((total + $(in_vm_on "$az" "$vm" 'cat /var/vcap/store/store-writer/drain.log 2>/dev/null | wc -l')))
	done < <(instances)
	echo "$total"
}

run_steps() {
	local vms disks drained orphaned
	section "upload-stemcell, upload-release, update-cloud-config"
	timed "upload-stemcell" bosh upload-stemcell "$STEMCELL" >"$WORK/upload-stemcell.log"
	timed "create-release (test release)" make_test_release
	timed "upload-release" bosh upload-release "$WORK/e2e-director.tgz" >"$WORK/upload-release.log"
	"$REPO/target/debug/cpi" bosh-config -c "$(jq -r .cpi_config_file "$CLUSTER")" cloud-config >"$WORK/cloud-config.yml"
	timed "update-cloud-config" bosh update-cloud-config "$WORK/cloud-config.yml" >/dev/null
	write_manifest

	section "deploy: $(nodes | wc -l) instances over $(nodes | wc -l) AZs, persistent disks"
	timed "deploy (compile, 3 VMs, 3 disks)" deploy first 1GB
	while read -r az vm _ _; do
		in_vm_on "$az" "$vm" 'echo "first deploy" >/var/vcap/store/store-writer/marker'
		on=$(in_vm_on "$az" "$vm" 'cat /var/vcap/packages/store-tools/compiled-on')
		[[ $on != "$(in_vm_on "$az" "$vm" 'uname -n')" && $on != "$(uname -n)" ]] ||
			fail "the package was not compiled on a compilation VM (compiled-on: $on)"
	done < <(instances)
	check_all 1
	instances

	section "property change (update in place)"
	vms=$(column_of 2) drained=$(drains)
	timed "deploy (property change)" deploy second 1GB
	[[ $(column_of 2) == "$vms" ]] || fail "a property change re-created VMs: $vms -> $(column_of 2)"
	(($(drains) == drained + $(nodes | wc -l))) || fail "the drain script did not run once per instance ($drained -> $(drains))"
	check_all 2
	while read -r az vm _ _; do
		in_vm_on "$az" "$vm" 'tail -n 1 /var/vcap/store/store-writer/data.log | grep -q "^start message=second "' ||
			fail "the new property did not reach $vm"
	done < <(instances)

	section "recreate"
	vms=$(column_of 2) disks=$(column_of 3)
	timed "recreate" bosh -d "$DEPLOYMENT" recreate >"$WORK/recreate.log"
	[[ $(column_of 3) == "$disks" ]] || fail "recreate changed disks: $disks -> $(column_of 3)"
	for vm in $(column_of 2); do
		[[ " $vms " != *" $vm "* ]] || fail "recreate kept VM $vm"
	done
	check_all 3

	section "persistent disk size change (the director's migration through the agent)"
	vms=$(column_of 2) disks=$(column_of 3)
	timed "deploy (disk 1GB -> 5GB)" deploy second 5GB
	[[ $(column_of 2) == "$vms" ]] || fail "the disk change re-created VMs: $vms -> $(column_of 2)"
	for disk in $(column_of 3); do
		[[ " $disks " != *" $disk "* ]] || fail "the disk change kept disk $disk"
	done
	check_all 4+
	# The director keeps the old disks as orphans (deleted by clean-up --all below): out of
	# every VM, listed as orphaned.
	orphaned=$(bosh disks --orphaned --json | jq -r '.Tables[0].Rows[].disk_cid')
	for disk in $disks; do
		grep -qx "$disk" <<<"$orphaned" || fail "the old disk $disk is not an orphan of the director"
		in_no_vm "$disk"
	done
	OLD_DISKS=$disks

	section "stop --hard, start"
	timed "stop --hard" bosh -d "$DEPLOYMENT" stop --hard >"$WORK/stop.log"
	[[ -z $(leftovers "$KEY_PREFIX" | grep '^container ' || true) ]] || fail "stop --hard left containers"
	timed "start" bosh -d "$DEPLOYMENT" start >"$WORK/start.log"
	check_all 5+

	section "cck after a VM's container was removed on its node"
	read -r az vm _ _ < <(instances)
	node_docker "$az" rm -f "$vm" >/dev/null
	timed "cck --auto (recreate the missing VM)" bosh -d "$DEPLOYMENT" cck --auto >"$WORK/cck.log"
	[[ $(instances | awk -v a="$az" '$1 == a {print $2}') != "$vm" ]] || fail "cck did not replace VM $vm"
	check_all 5+

	section "take-snapshot"
	# The director also snapshots every disk before each instance update (snapshots
	# enabled): take-snapshot adds one per instance to those.
	local before after cid left
	before=$(snapshot_cids)
	timed "take-snapshot" bosh -d "$DEPLOYMENT" take-snapshot >"$WORK/snapshot.log"
	after=$(snapshot_cids)
	(($(comm -13 <(echo "$before") <(echo "$after") | grep -c .) == $(nodes | wc -l))) ||
		fail "take-snapshot did not make one snapshot per instance"
	for cid in $after; do
		[[ -n $(etcd_keys "$KEY_PREFIX/snapshots/$cid") ]] || fail "snapshot $cid has no record in etcd"
	done
	timed "delete-snapshots" bosh -d "$DEPLOYMENT" delete-snapshots >/dev/null
	left=$(snapshot_cids)
	[[ -z $left ]] || fail "delete-snapshots left snapshots in the director: $left"
	for cid in $after; do
		[[ -z $(etcd_keys "$KEY_PREFIX/snapshots/$cid") ]] || fail "delete-snapshots left snapshot $cid in etcd"
		[[ -z $(leftovers "$KEY_PREFIX" | grep "volume $cid " || true) ]] || fail "delete-snapshots left the volume of $cid"
	done

	section "a node rebooted by its reboot manager under the deployment"
	timed "node reboot (drain, reboot, health gate)" reboot_node_of_first_instance
	bosh -d "$DEPLOYMENT" instances --ps
	check_all 5+

	section "delete-deployment, clean-up --all"
	disks=$(column_of 3)
	timed "delete-deployment" bosh -d "$DEPLOYMENT" delete-deployment >"$WORK/delete.log"
	timed "clean-up --all" bosh clean-up --all >"$WORK/clean-up.log"
	# shellcheck disable=SC2086 # one argument per disk
	mapfile -t left < <(leftovers "$KEY_PREFIX" $disks $OLD_DISKS)
	((${#left[@]} == 0)) || fail "delete-deployment and clean-up --all left: ${left[*]}"
	echo "nothing left on $(nodes | wc -l) nodes and in etcd"
}

snapshot_cids() {
	local json
	json=$(bosh -d "$DEPLOYMENT" snapshots --json) || fail "bosh snapshots failed"
	jq -r '.Tables[0].Rows[].cid' <<<"$json" | sort
}

# in_no_vm DISK: no VM of any node has DISK (no record in a disk tree, no loop device over
# its image).
in_no_vm() {
	local n tree
	for n in $(nodes); do
		tree=$(jq -r --arg n "$n" '.nodes[] | select(.name == $n) | .prep_root' "$CLUSTER")/var/lib/moltencore/vm-disks
		! compgen -G "$tree/.bound/*/$1" >/dev/null || fail "disk $1 is still in a VM on $n: $(ls "$tree"/.bound/*/"$1")"
	done
	! losetup -n -l -O BACK-FILE | grep -q "/$1/_data/" || fail "a loop device is still over disk $1's image"
}

# The node of the first instance, rebooted through its reboot manager; the VM is the same
# afterwards and its job started once more on its disk.
reboot_node_of_first_instance() {
	local az vm index root boot deadline starts
	read -r az vm _ _ < <(instances)
	# (timed runs this function with errexit off: every step says when it fails.)
	index=$(jq -r --arg n "$az" '.nodes | map(.name) | index($n) // empty | . + 1' "$CLUSTER")
	[[ $index =~ ^[1-9][0-9]*$ ]] || fail "no node $az in $CLUSTER"
	root=$(jq -r --arg n "$az" '.nodes[] | select(.name == $n) | .prep_root' "$CLUSTER")
	boot=$(cat "$root/proc/sys/kernel/random/boot_id") || fail "no boot id of $az"
	starts=$(in_vm_on "$az" "$vm" 'grep -c "^start " /var/vcap/store/store-writer/data.log')
	ci/cluster manager "$index" start --grace-period 30s --settle 2s --poll 300ms --update-engine-command= ||
		fail "the reboot manager of $az did not start"
	touch "$root/run/reboot-required" || fail "cannot flag $az for a reboot"
	deadline=$((SECONDS + 300))
	until [[ $(cat "$root/proc/sys/kernel/random/boot_id") != "$boot" ]] &&
		[[ -z $(etcd_keys "$KEY_PREFIX/reboot/nodes/$az") ]]; do
		((SECONDS < deadline)) || fail "$az did not reboot and finish within 300 s"
		sleep 1
	done
	ci/cluster manager "$index" stop || fail "the reboot manager of $az did not stop"
	[[ $(instances | awk -v a="$az" '$1 == a {print $2}') == "$vm" ]] || fail "the VM on $az changed over the reboot"
	check_store_on "$az" "$vm" "$(instances | awk -v a="$az" '$1 == a {print $3}')"
	check_job_on "$az" "$vm" store-writer >/dev/null
	(($(in_vm_on "$az" "$vm" 'grep -c "^start " /var/vcap/store/store-writer/data.log') == starts + 1)) ||
		fail "the job on $vm did not start once more on its disk after the reboot"
}
