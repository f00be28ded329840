-- venn node store, schema 1: domains, routes, invitations, catalogue, grants.
-- PostgreSQL: the SQLite schema with BIGINT for every integer and COLLATE "C" on keys, so they
-- compare and sort byte-wise as in SQLite (pagination gives the same pages).

-- Domains: this node ("self") and pinned partners.
CREATE TABLE domains (
    domain_id   VARCHAR(63) COLLATE "C"  NOT NULL PRIMARY KEY,
    role        VARCHAR(16) COLLATE "C"  NOT NULL,          -- self | partner
    ca_cert     TEXT         NOT NULL,          -- PEM
    ca_sha256   VARCHAR(64) COLLATE "C"  NOT NULL,
    endpoint    VARCHAR(255) COLLATE "C" NOT NULL DEFAULT '',
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL
);

-- Routes: "<source>-<destination>", outbound (host set) and inbound (host empty).
CREATE TABLE routes (
    name            VARCHAR(127) COLLATE "C" NOT NULL PRIMARY KEY,
    source          VARCHAR(63) COLLATE "C"  NOT NULL,
    destination     VARCHAR(63) COLLATE "C"  NOT NULL,
    host            VARCHAR(255) COLLATE "C" NOT NULL DEFAULT '',
    authentication  VARCHAR(16) COLLATE "C"  NOT NULL,
    ready           BIGINT      NOT NULL DEFAULT 0,
    reason          VARCHAR(32) COLLATE "C"  NOT NULL DEFAULT '',
    message         TEXT         NOT NULL,
    last_heartbeat  BIGINT       NOT NULL DEFAULT 0,
    updated_at      BIGINT       NOT NULL
);

-- One-time partner invitations; only the secret's SHA-256 is stored.
CREATE TABLE invitations (
    id             VARCHAR(64) COLLATE "C"  NOT NULL PRIMARY KEY,
    peer           VARCHAR(63) COLLATE "C"  NOT NULL,
    secret_sha256  VARCHAR(64) COLLATE "C"  NOT NULL,
    expires_at     BIGINT       NOT NULL,
    used_at        BIGINT       NOT NULL DEFAULT 0,
    created_at     BIGINT       NOT NULL
);

CREATE TABLE datasources (
    datasource_id    VARCHAR(127) COLLATE "C" NOT NULL PRIMARY KEY,
    domain_id        VARCHAR(63) COLLATE "C"  NOT NULL,
    name             VARCHAR(255) COLLATE "C" NOT NULL,
    type             VARCHAR(32) COLLATE "C"  NOT NULL,      -- localfs
    path             TEXT         NOT NULL,      -- localfs root, absolute
    access_directly  BIGINT      NOT NULL DEFAULT 0,
    created_at       BIGINT       NOT NULL,
    updated_at       BIGINT       NOT NULL
);

CREATE TABLE domaindata (
    domaindata_id  VARCHAR(127) COLLATE "C" NOT NULL PRIMARY KEY,
    domain_id      VARCHAR(63) COLLATE "C"  NOT NULL,
    name           VARCHAR(255) COLLATE "C" NOT NULL,
    type           VARCHAR(32) COLLATE "C"  NOT NULL,
    relative_uri   TEXT         NOT NULL,
    datasource_id  VARCHAR(127) COLLATE "C" NOT NULL REFERENCES datasources(datasource_id),
    attributes     TEXT         NOT NULL,        -- JSON object of strings
    columns        TEXT         NOT NULL,        -- JSON array of {name,type,comment,not_nullable}
    vendor         VARCHAR(63) COLLATE "C"  NOT NULL DEFAULT '',
    author         VARCHAR(63) COLLATE "C"  NOT NULL DEFAULT '',
    created_at     BIGINT       NOT NULL,
    updated_at     BIGINT       NOT NULL
);

-- Grants made by this node (domain_id = self) and received from partners (domain_id = grantor).
CREATE TABLE domaindatagrants (
    domaindatagrant_id  VARCHAR(127) COLLATE "C" NOT NULL PRIMARY KEY,
    domain_id           VARCHAR(63) COLLATE "C"  NOT NULL,
    domaindata_id       VARCHAR(127) COLLATE "C" NOT NULL,
    grant_domain        VARCHAR(63) COLLATE "C"  NOT NULL,
    description         TEXT         NOT NULL,   -- JSON object of strings
    expiration_time     BIGINT       NOT NULL DEFAULT 0,  -- Unix s, 0 = none
    use_count           BIGINT       NOT NULL DEFAULT 0,  -- 0 = unlimited
    used_count          BIGINT       NOT NULL DEFAULT 0,
    limit_extra         TEXT         NOT NULL,   -- JSON: flow_id, components, initiator, ...
    signature           TEXT         NOT NULL,   -- grantor's signature over the canonical grant
    signer_cert         TEXT         NOT NULL,   -- PEM of the grantor's gateway certificate
    delivered           BIGINT      NOT NULL DEFAULT 0,
    created_at          BIGINT       NOT NULL,
    updated_at          BIGINT       NOT NULL
);
CREATE INDEX domaindatagrants_grant_domain ON domaindatagrants (grant_domain);
CREATE INDEX domaindata_datasource ON domaindata (datasource_id);
