# Sourced by .ci/run (and by developers: `source .ci/test-databases.sh`, as root): installs,
# starts and prepares MariaDB and PostgreSQL for the store tests, then exports
# VENN_TEST_MYSQL_URL, VENN_TEST_POSTGRES_URL, VENN_TEST_DB_CA and VENN_TEST_REQUIRE_SERVERS=1.
# TLS: PostgreSQL uses Debian's snakeoil certificate (`ssl = on`); MariaDB gets a test CA and a
# server certificate for 127.0.0.1/localhost, made once in /var/lib/venn-test-tls (VENN_TEST_DB_CA
# is that CA, for the store's TLS tests).
# Idempotent and quick when the servers are already installed and running: it checks before
# each step. The servers listen on loopback only and hold nothing but test databases.

venn_db_log() { printf '  %s\n' "$*"; }

venn_wait() { # venn_wait WHAT COMMAND...: up to 30 s
  local what="$1"; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "test databases: $what did not come up" >&2
  return 1
}

venn_test_databases() {
  local need=()
  command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 || need+=(mariadb-server)
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  if ((${#need[@]})); then
    venn_db_log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi

  # MariaDB TLS: the certificates once, then a drop-in naming them; a server already running
  # restarts only when the drop-in is new.
  local tls=/var/lib/venn-test-tls dropin=/etc/mysql/mariadb.conf.d/60-venn-test-tls.cnf
  if [ ! -s "$tls/server.pem" ]; then
    venn_db_log "making the MariaDB test certificates in $tls"
    install -d -m 0755 "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=venn test database CA" \
      -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf '%s\n' 'subjectAltName = DNS:localhost, IP:127.0.0.1' 'basicConstraints = CA:FALSE' \
      'keyUsage = digitalSignature, keyEncipherment' 'extendedKeyUsage = serverAuth' \
      >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
      -CAcreateserial -days 3650 -extfile "$tls/server.ext" -out "$tls/server.pem.new" 2>/dev/null
    chown mysql:mysql "$tls/server.key"
    chmod 0600 "$tls/server.key" "$tls/ca.key"
    chmod 0644 "$tls/ca.pem" "$tls/server.pem.new"
    mv "$tls/server.pem.new" "$tls/server.pem"
  fi
  local restart=0
  if [ ! -e "$dropin" ]; then
    printf '%s\n' '# venn store tests (.ci/test-databases.sh): TLS with a test CA.' '[mariadbd]' \
      "ssl_ca = $tls/ca.pem" "ssl_cert = $tls/server.pem" "ssl_key = $tls/server.key" \
      >"$dropin"
    restart=1
  fi

  # MariaDB (no systemd here: the init script, or mysqld_safe as a fallback).
  if ((restart)) && mariadb-admin ping --silent >/dev/null 2>&1; then
    venn_db_log "restarting MariaDB (TLS)"
    service mariadb restart >/dev/null 2>&1 || {
      mariadb-admin -u root shutdown || true
      (mysqld_safe >/dev/null 2>&1 &)
    }
    venn_wait MariaDB mariadb-admin ping --silent
  fi
  if ! mariadb-admin ping --silent >/dev/null 2>&1; then
    venn_db_log "starting MariaDB"
    service mariadb start >/dev/null 2>&1 || (mysqld_safe >/dev/null 2>&1 &)
    venn_wait MariaDB mariadb-admin ping --silent
  fi
  mariadb -u root <<'SQL'
CREATE USER IF NOT EXISTS 'venn'@'localhost' IDENTIFIED BY 'venn';
CREATE USER IF NOT EXISTS 'venn'@'127.0.0.1' IDENTIFIED BY 'venn';
-- venn and the tests' own databases (venn_t_*); CREATE USER for the no-DDL-rights test.
GRANT ALL PRIVILEGES ON `venn`.* TO 'venn'@'localhost', 'venn'@'127.0.0.1';
GRANT ALL PRIVILEGES ON `venn\_t\_%`.* TO 'venn'@'localhost', 'venn'@'127.0.0.1' WITH GRANT OPTION;
GRANT CREATE USER ON *.* TO 'venn'@'localhost', 'venn'@'127.0.0.1';
CREATE DATABASE IF NOT EXISTS venn;
SQL
  if [ "$(mariadb -u root -N -e 'SELECT @@have_ssl')" != YES ]; then
    # Not fatal: the store's TLS tests then fail and say so.
    echo "test databases: MariaDB has no TLS (see $dropin and the server's log)" >&2
  fi
  # Leftovers of interrupted runs.
  mariadb -u root -N -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'venn\\_t\\_%'" |
    while read -r db; do mariadb -u root -e "DROP DATABASE \`$db\`"; done

  # PostgreSQL: the newest installed major version, its cluster created if missing.
  local ver
  ver="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
  if ! pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main"' | grep -q .; then
    venn_db_log "creating PostgreSQL $ver cluster"
    pg_createcluster "$ver" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
    venn_db_log "starting PostgreSQL $ver"
    pg_ctlcluster "$ver" main start
  fi
  venn_wait PostgreSQL pg_isready -q -h 127.0.0.1
  runuser -u postgres -- psql -qX -v ON_ERROR_STOP=1 <<'SQL'
SELECT 'CREATE ROLE venn LOGIN CREATEDB CREATEROLE PASSWORD ''venn'''
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'venn') \gexec
SELECT 'CREATE DATABASE venn OWNER venn'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'venn') \gexec
SELECT format('DROP DATABASE %I WITH (FORCE)', datname) FROM pg_database
  WHERE datname LIKE 'venn\_t\_%' \gexec
SQL

  export VENN_TEST_MYSQL_URL="mysql://venn:venn@127.0.0.1:3306/venn"
  export VENN_TEST_POSTGRES_URL="postgres://venn:venn@127.0.0.1:5432/venn"
  export VENN_TEST_DB_CA="$tls/ca.pem"
  export VENN_TEST_REQUIRE_SERVERS=1
}

venn_test_databases
