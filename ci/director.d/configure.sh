# Sourced by ci/director: the director's state for one cluster (certificates, passwords,
# the configuration rendered from the release's own job templates) and its start.
# shellcheck shell=bash

# Runs a command in the director's root: the cached root under the state's writable layer
# (overlayfs), /proc and /dev, in a mount namespace of its own so that nothing stays
# mounted when it ends. `in_director --daemon ROOT` starts director-start in a PID
# namespace as well: killing the returned process ends every process of the director.
in_director() {
	local daemon=
	[[ $1 != --daemon ]] || { daemon=1 && shift; }
	local root=$1 m=$STATE/merged
	shift
	mkdir -p "$STATE"/{upper,work,merged}
	local script='
		set -e
		mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$2/merged"
		mount -t proc proc "$2/merged/proc"
		mount --rbind /dev "$2/merged/dev"
		shift 2
		exec chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
			MC_DB_PORT="$MC_DB_PORT" "$@"'
	if [[ -n $daemon ]]; then
		M=$m MC_DB_PORT=$DB_PORT setsid unshare --mount --propagation private --pid --fork --kill-child \
			bash -c "$script" in_director "$root" "$STATE" /var/vcap/bosh/bin/director-start \
			>>"$STATE/director.log" 2>&1 </dev/null &
		local pid=$! started=
		for _ in $(seq 50); do
			started=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null) && break
			sleep 0.1
		done
		echo "$pid $started" >"$PIDFILE"
	else
		M=$m MC_DB_PORT=$DB_PORT unshare --mount --propagation private bash -c "$script" in_director "$root" "$STATE" "$@"
	fi
}

# A certificate signed by a CA of the state: issue NAME CA CN EXTENDED_USAGE [SAN]. RSA
# throughout: the director loads the NATS client CA's key as RSA.
issue() {
	local p=$STATE/pki
	openssl req -new -newkey rsa:2048 -nodes -subj "/O=Cloud Foundry/CN=$3" \
		-keyout "$p/$1.key" -out "$p/$1.csr" 2>>"$STATE/pki/openssl.log"
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$4"
		[[ -z ${5:-} ]] || echo "subjectAltName=$5"
	} >"$p/$1.ext"
	openssl x509 -req -in "$p/$1.csr" -CA "$p/$2.crt" -CAkey "$p/$2.key" -CAcreateserial -days 30 \
		-extfile "$p/$1.ext" -out "$p/$1.crt" 2>>"$STATE/pki/openssl.log"
	rm -f "$p/$1.csr" "$p/$1.ext"
}

make_ca() {
	openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/O=Cloud Foundry/CN=$2" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
		-keyout "$STATE/pki/$1.key" -out "$STATE/pki/$1.crt" 2>>"$STATE/pki/openssl.log"
}

password() { openssl rand -hex 16; }

# configure ROOT CPI_BIN: the state folder with everything the director reads.
configure() {
	local root=$1 cpi_bin=$2 ip u
	ip=$(host_ip)
	[[ $ip =~ ^[0-9]+(\.[0-9]+){3}$ ]] || die "no address of this machine towards the cluster's nodes"
	# Folders 0755 (the upper layer's modes are the root's: PostgreSQL runs as its own
	# user), secrets 0600.
	umask 022
	mkdir -p "$STATE/pki"
	# Its logs, tasks and blobs are the director's alone.
	chmod 0700 "$STATE" "$STATE/pki"
	echo "$ip" >"$STATE/host_ip"
	(umask 077 && password >"$STATE/admin_password")
	# The director's and the blobstore's TLS under one CA (the CLI's BOSH_CA_CERT); NATS
	# under its own, which also signs the certificate each agent gets (env.bosh.mbus.cert).
	make_ca ca moltencore-director-ca
	issue director ca "$ip" serverAuth "IP:$ip,IP:127.0.0.1"
	issue blobstore ca "$ip" serverAuth "IP:$ip,IP:127.0.0.1"
	make_ca nats-ca moltencore-nats-ca
	issue nats-server nats-ca default.nats.bosh-internal serverAuth "DNS:default.nats.bosh-internal,IP:$ip"
	issue nats-director nats-ca default.director.bosh-internal clientAuth
	local db_pw blob_director_pw blob_agent_pw
	db_pw=$(password) blob_director_pw=$(password) blob_agent_pw=$(password)

	u=$STATE/upper
	mkdir -p "$u/var/vcap/jobs"/{director/config,nats/config,blobstore/config,moltencore_cpi} \
		"$u/var/vcap/packages/moltencore_cpi" "$u/var/vcap/sys/log/moltencore_cpi" "$u/var/vcap/moltencore-release"
	install -m 0755 "$cpi_bin" "$u/var/vcap/packages/moltencore_cpi/cpi"
	install -D -m 0755 "$FILES/verify-multidigest" "$u/var/vcap/packages/verify_multidigest/bin/verify-multidigest"
	install -D -m 0644 "$FILES/api.rb" "$u/var/vcap/packages/director/api.rb"
	install -D -m 0644 "$FILES/render.rb" "$u/var/vcap/packages/director/render.rb"
	install -D -m 0755 "$FILES/start" "$u/var/vcap/bosh/bin/director-start"
	cp -r "$REPO/jobs" "$u/var/vcap/moltencore-release/"
	(umask 077 && echo "$db_pw" >"$u/var/vcap/jobs/director/config/db_password")
	cp "$STATE/pki/nats-server.crt" "$u/var/vcap/jobs/nats/config/nats_server_certificate.pem"
	install -m 0600 "$STATE/pki/nats-server.key" "$u/var/vcap/jobs/nats/config/nats_server_private_key"
	cp "$STATE/pki/nats-ca.crt" "$u/var/vcap/jobs/nats/config/nats_client_ca.pem"
	nats_config "$ip" >"$u/var/vcap/jobs/nats/config/nats.cfg"
	nginx_config "$ip" >"$u/var/vcap/jobs/director/config/nginx.conf"
	cp "$STATE/pki/blobstore.crt" "$u/var/vcap/jobs/blobstore/config/server_tls_cert.pem"
	install -m 0600 "$STATE/pki/blobstore.key" "$u/var/vcap/jobs/blobstore/config/server_tls_private_key.pem"

	local blobstore
	# Passwords reach jq through its environment, never on a command line.
	blobstore=$(PW=$blob_agent_pw jq -n --arg ip "$ip" --arg port "$BLOBSTORE_PORT" --rawfile ca "$STATE/pki/ca.crt" \
		'{provider: "dav", options: {endpoint: "https://\($ip):\($port)", user: "agent", password: $ENV.PW, tls: {cert: {ca: $ca}}}}')
	(
		umask 077
		director_properties "$ip" "$db_pw" "$blob_director_pw" "$blobstore" >"$u/var/vcap/jobs/director/properties.json"
		cpi_properties "$ip" "$blobstore" >"$u/var/vcap/jobs/moltencore_cpi/properties.json"
		DPW=$blob_director_pw APW=$blob_agent_pw jq -n \
			'{blobstore: {director: {user: "director", password: $ENV.DPW}, agent: {user: "agent", password: $ENV.APW}}}' \
			>"$u/var/vcap/jobs/blobstore/properties.json"
	)
	in_director "$root" bash -euo pipefail -c '
		cd /var/vcap/packages/director
		render() { bundle exec ruby render.rb "$1" "$2" "/var/vcap/jobs/$2/properties.json" "$3" "/var/vcap/jobs/$2" "${@:4}"; }
		render release director "$0" config/director.yml config/ssl/director.pem config/ssl/director.key \
			config/nats_server_ca.pem config/nats_client_ca_certificate.pem config/nats_client_ca_private_key \
			config/nats_client_certificate.pem config/nats_client_private_key
		render release blobstore "$0" config/read_users config/write_users
		render /var/vcap/moltencore-release moltencore_cpi "$0" bin/cpi config/cpi.json
		chmod 0755 /var/vcap/jobs/moltencore_cpi/bin/cpi
		rm /var/vcap/jobs/{director,blobstore,moltencore_cpi}/properties.json
	' "$ip" || die "rendering the director's and the CPI's job templates failed"
}

# The director job's properties (jobs/director/spec of the source); what is not set here
# keeps the spec's default.
director_properties() {
	local p=$STATE/pki
	DB_PW=$2 BLOB_PW=$3 ADMIN_PW=$(cat "$STATE/admin_password") AGENT_BLOBSTORE=$4 jq -n --arg ip "$1" \
		--argjson nats_port "$NATS_PORT" \
		--argjson db_port "$DB_PORT" --argjson blob_port "$BLOBSTORE_PORT" \
		--rawfile ca "$p/ca.crt" --rawfile cert "$p/director.crt" --rawfile key "$p/director.key" \
		--rawfile nats_ca "$p/nats-ca.crt" --rawfile nats_ca_key "$p/nats-ca.key" \
		--rawfile nats_cert "$p/nats-director.crt" --rawfile nats_key "$p/nats-director.key" '{
		director: {
			name: "moltencore", cpi_job: "moltencore_cpi", workers: 2, puma_workers: 2,
			enable_snapshots: true, enable_dedicated_status_worker: false,
			ssl: {cert: $cert, key: $key},
			db: {adapter: "postgres", host: "127.0.0.1", port: $db_port, user: "bosh", password: $ENV.DB_PW, database: "bosh"},
			user_management: {provider: "local", local: {users: [{name: "admin", password: $ENV.ADMIN_PW}]}}
		},
		nats: {address: $ip, port: $nats_port,
			tls: {ca: $nats_ca, client_ca: {certificate: $nats_ca, private_key: $nats_ca_key},
				director: {certificate: $nats_cert, private_key: $nats_key}}},
		blobstore: {provider: "dav", address: $ip, port: $blob_port,
			director: {user: "director", password: $ENV.BLOB_PW}, tls: {cert: {ca: $ca}}},
		agent: {env: {bosh: {blobstores: [$ENV.AGENT_BLOBSTORE | fromjson]}}}
	}'
}

# The moltencore_cpi job's properties: the cluster's etcd and Docker client certificates
# and VM defaults, the director's NATS as the agents' mbus, its blobstore for the agents.
cpi_properties() {
	local c
	c=$(jq -r .cpi_config_file "$CLUSTER")
	BLOBSTORE=$2 jq -n --arg ip "$1" --argjson port "$NATS_PORT" --slurpfile cpi "$c" \
		--rawfile etcd_ca "$(jq -r .etcd.tls.ca_cert_file "$c")" \
		--rawfile etcd_cert "$(jq -r .etcd.tls.client_cert_file "$c")" \
		--rawfile etcd_key "$(jq -r .etcd.tls.client_key_file "$c")" \
		--rawfile docker_cert "$(jq -r .docker.tls.client_cert_file "$c")" \
		--rawfile docker_key "$(jq -r .docker.tls.client_key_file "$c")" '{
		moltencore_cpi: {
			etcd: {endpoints: $cpi[0].etcd.endpoints, key_prefix: $cpi[0].etcd.key_prefix,
				flannel_prefix: $cpi[0].etcd.flannel_prefix,
				tls: {ca_cert: $etcd_ca, client_cert: $etcd_cert, client_key: $etcd_key}},
			docker: {tls: {client_cert: $docker_cert, client_key: $docker_key}},
			agent: {mbus: "nats://\($ip):\($port)", blobstore: ($ENV.BLOBSTORE | fromjson)},
			vm_defaults: $cpi[0].vm_defaults
		}
	}'
}

# NATS as the release's nats job runs it (mutual TLS, the agents' certificates issued by
# the director from the client CA), without its per-user authorization (which
# bosh-nats-sync keeps in step with the director's VMs): every client certificate of the
# CA is let in.
nats_config() {
	cat <<EOF
host: $1
port: $NATS_PORT
logtime: true
log_file: /var/vcap/sys/log/nats/nats.log
tls {
  cert_file: "/var/vcap/jobs/nats/config/nats_server_certificate.pem"
  key_file: "/var/vcap/jobs/nats/config/nats_server_private_key"
  ca_file: "/var/vcap/jobs/nats/config/nats_client_ca.pem"
  verify: true
  timeout: 30
}
ping_interval: 5
ping_max: 2
max_payload: 1048576
EOF
}

# nginx as the release's director and blobstore jobs run it (jobs/director/templates/
# nginx.conf.erb, jobs/blobstore/templates/blobstore.conf.erb), less the upload module
# (api.rb does that step) and signed URLs.
nginx_config() {
	cat <<EOF
user root;
worker_processes 2;
pid /var/vcap/sys/run/nginx.pid;
error_log /var/vcap/sys/log/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log /var/vcap/sys/log/nginx/access.log;
  client_body_temp_path /var/vcap/data/nginx/client_body;
  proxy_temp_path /var/vcap/data/nginx/proxy;
  fastcgi_temp_path /var/vcap/data/nginx/fastcgi;
  uwsgi_temp_path /var/vcap/data/nginx/uwsgi;
  scgi_temp_path /var/vcap/data/nginx/scgi;
  sendfile on;
  server {
    listen $1:$DIRECTOR_PORT ssl;
    listen 127.0.0.1:$DIRECTOR_PORT ssl;
    ssl_certificate /var/vcap/jobs/director/config/ssl/director.pem;
    ssl_certificate_key /var/vcap/jobs/director/config/ssl/director.key;
    client_max_body_size 10g;
    proxy_read_timeout 900;
    proxy_max_temp_file_size 0;
    location /x_accel_files/ { internal; alias /; }
    location / {
      proxy_pass http://127.0.0.1:25556;
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
  server {
    listen $1:$BLOBSTORE_PORT ssl;
    ssl_certificate /var/vcap/jobs/blobstore/config/server_tls_cert.pem;
    ssl_certificate_key /var/vcap/jobs/blobstore/config/server_tls_private_key.pem;
    client_max_body_size 10g;
    location ~* ^/(?<object_id>[a-fA-F0-9][a-fA-F0-9]/.+) {
      root /var/vcap/store/blobstore/store/;
      dav_methods DELETE PUT;
      create_full_put_path on;
      auth_basic "Blobstore Read";
      auth_basic_user_file /var/vcap/jobs/blobstore/config/read_users;
      limit_except GET {
        auth_basic "Blobstore Write";
        auth_basic_user_file /var/vcap/jobs/blobstore/config/write_users;
      }
    }
  }
}
EOF
}

# start ROOT: the director's processes, then wait until its API answers.
start() {
	local root=$1
	log "starting (PostgreSQL, NATS, nginx, migrations, API, workers)"
	in_director --daemon "$root"
	for _ in $(seq 300); do
		info >/dev/null 2>&1 && return 0
		running || break
		sleep 1
	done
	stop
	tail -n 20 "$STATE/director.log" >&2 || true
	for f in "$STATE"/upper/var/vcap/sys/log/director/*.log; do
		[[ -s $f ]] || continue
		echo "--- ${f##*/}" >&2
		tail -n 15 "$f" >&2
	done
	die "the director did not answer /info (state $STATE)"
}
