-- venn node store, schema 1: domains, routes, invitations, catalogue, grants.
-- MySQL/MariaDB: the SQLite schema with BIGINT for every integer, MEDIUMTEXT for text (TEXT
-- stops at 64 KiB), and utf8mb4_bin so keys compare byte-wise as in SQLite.

-- Domains: this node ("self") and pinned partners.
CREATE TABLE domains (
    domain_id   VARCHAR(63)  NOT NULL PRIMARY KEY,
    role        VARCHAR(16)  NOT NULL,          -- self | partner
    ca_cert     MEDIUMTEXT         NOT NULL,          -- PEM
    ca_sha256   VARCHAR(64)  NOT NULL,
    endpoint    VARCHAR(255) NOT NULL DEFAULT '',
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Routes: "<source>-<destination>", outbound (host set) and inbound (host empty).
CREATE TABLE routes (
    name            VARCHAR(127) NOT NULL PRIMARY KEY,
    source          VARCHAR(63)  NOT NULL,
    destination     VARCHAR(63)  NOT NULL,
    host            VARCHAR(255) NOT NULL DEFAULT '',
    authentication  VARCHAR(16)  NOT NULL,
    ready           BIGINT      NOT NULL DEFAULT 0,
    reason          VARCHAR(32)  NOT NULL DEFAULT '',
    message         MEDIUMTEXT         NOT NULL,
    last_heartbeat  BIGINT       NOT NULL DEFAULT 0,
    updated_at      BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One-time partner invitations; only the secret's SHA-256 is stored.
CREATE TABLE invitations (
    id             VARCHAR(64)  NOT NULL PRIMARY KEY,
    peer           VARCHAR(63)  NOT NULL,
    secret_sha256  VARCHAR(64)  NOT NULL,
    expires_at     BIGINT       NOT NULL,
    used_at        BIGINT       NOT NULL DEFAULT 0,
    created_at     BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE datasources (
    datasource_id    VARCHAR(127) NOT NULL PRIMARY KEY,
    domain_id        VARCHAR(63)  NOT NULL,
    name             VARCHAR(255) NOT NULL,
    type             VARCHAR(32)  NOT NULL,      -- localfs
    path             MEDIUMTEXT         NOT NULL,      -- localfs root, absolute
    access_directly  BIGINT      NOT NULL DEFAULT 0,
    created_at       BIGINT       NOT NULL,
    updated_at       BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE domaindata (
    domaindata_id  VARCHAR(127) NOT NULL PRIMARY KEY,
    domain_id      VARCHAR(63)  NOT NULL,
    name           VARCHAR(255) NOT NULL,
    type           VARCHAR(32)  NOT NULL,
    relative_uri   MEDIUMTEXT         NOT NULL,
    datasource_id  VARCHAR(127) NOT NULL,
    attributes     MEDIUMTEXT         NOT NULL,        -- JSON object of strings
    columns        MEDIUMTEXT         NOT NULL,        -- JSON array of {name,type,comment,not_nullable}
    vendor         VARCHAR(63)  NOT NULL DEFAULT '',
    author         VARCHAR(63)  NOT NULL DEFAULT '',
    created_at     BIGINT       NOT NULL,
    updated_at     BIGINT       NOT NULL,
    -- Table-level: MySQL parses but ignores a column-level REFERENCES.
    FOREIGN KEY (datasource_id) REFERENCES datasources (datasource_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Grants made by this node (domain_id = self) and received from partners (domain_id = grantor).
CREATE TABLE domaindatagrants (
    domaindatagrant_id  VARCHAR(127) NOT NULL PRIMARY KEY,
    domain_id           VARCHAR(63)  NOT NULL,
    domaindata_id       VARCHAR(127) NOT NULL,
    grant_domain        VARCHAR(63)  NOT NULL,
    description         MEDIUMTEXT         NOT NULL,   -- JSON object of strings
    expiration_time     BIGINT       NOT NULL DEFAULT 0,  -- Unix s, 0 = none
    use_count           BIGINT       NOT NULL DEFAULT 0,  -- 0 = unlimited
    used_count          BIGINT       NOT NULL DEFAULT 0,
    limit_extra         MEDIUMTEXT         NOT NULL,   -- JSON: flow_id, components, initiator, ...
    signature           MEDIUMTEXT         NOT NULL,   -- grantor's signature over the canonical grant
    signer_cert         MEDIUMTEXT         NOT NULL,   -- PEM of the grantor's gateway certificate
    delivered           BIGINT      NOT NULL DEFAULT 0,
    created_at          BIGINT       NOT NULL,
    updated_at          BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX domaindatagrants_grant_domain ON domaindatagrants (grant_domain);
CREATE INDEX domaindata_datasource ON domaindata (datasource_id);
