-- venn node store, schema 5: the centralized network (master and lite nodes).
-- MySQL: utf8mb4_bin as in schema 1. Used on a master only: deploy tokens for lites, and the registered lite node of each domain.

-- Deploy tokens: single use, expiring; only the secret's SHA-256 is stored, so a token is shown
-- once (at issue) and can never be shown again.
CREATE TABLE deploy_tokens (
    id             VARCHAR(64)  NOT NULL PRIMARY KEY,
    domain_id      VARCHAR(63)  NOT NULL,
    secret_sha256  VARCHAR(64)  NOT NULL,
    expires_at     BIGINT       NOT NULL,
    used_at        BIGINT       NOT NULL DEFAULT 0,
    created_at     BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX deploy_tokens_domain ON deploy_tokens (domain_id);

-- The lite node of each domain: the key it registered (hex SHA-256 of the subject public key;
-- empty = not registered, a deploy token is needed) and what its heartbeats report.
CREATE TABLE lite_nodes (
    domain_id       VARCHAR(63)  NOT NULL PRIMARY KEY,
    key_sha256      VARCHAR(64)  NOT NULL DEFAULT '',
    version         VARCHAR(63)  NOT NULL DEFAULT '',
    last_heartbeat  BIGINT       NOT NULL DEFAULT 0,
    registered_at   BIGINT       NOT NULL DEFAULT 0,
    created_at      BIGINT       NOT NULL,
    updated_at      BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
